"""The public API is frozen: moving code between modules must not add, drop or rename a name.

Recorded from main before the package split (PLAN13), with ``minscale.__all__``, the
``__all__`` of every public module (every module path without an underscore-led part, as
tests/test_docs.py enumerates them), the public functions and classes of the public modules
that have no ``__all__`` (the CLI sub-commands), and the kernels every backend must offer.

Rules the refactor keeps:

- a frozen module path still imports, and its ``__all__`` is exactly the frozen list plus what
  ADDED declares for it (ADDED starts empty: every addition is a reviewed, documented edit);
- every frozen name still resolves as an attribute of its module (lazy attributes included);
- a module frozen without ``__all__`` keeps every frozen name (it may gain imported ones);
- new public modules (``minscale.quant.integer`` ...) are free, but must not shadow a name.
"""
import importlib

import pytest

#: module -> sorted ``__all__`` on main before the split
ALL = {
    'minscale.export': ['c_size_report', 'c_sources', 'from_onnx', 'to_c', 'to_onnx'],
    'minscale': [
        'Dense', 'Sequential', '__version__', 'data', 'datasets', 'get_backend', 'io', 'kernels',
        'layers', 'load', 'losses', 'model', 'optim', 'parallel', 'prune', 'quant', 'report',
        'save', 'schedules', 'set_backend', 'study', 'testing', 'train'
    ],
    # new module (regularization): its whole list is a reviewed addition
    'minscale.regularizers': [
        'L2', 'check_strength', 'coupled_weight_decay', 'decoupled_weight_decay', 'deserialize',
        'get', 'l2_gradient', 'l2_penalty', 'serialize'
    ],
    'minscale.cli': [
        'UsageError', 'build_parser', 'main'
    ],
    'minscale.data': [
        'Standardizer', 'accuracy', 'check_Xy', 'check_array', 'mean_and_scale', 'one_hot',
        'standardize', 'train_test_split'
    ],
    'minscale.datasets': [
        'NAMES', 'load', 'load_csv', 'load_diabetes', 'load_digits', 'load_npz', 'make_linear'
    ],
    'minscale.io': [
        'FORMAT_NAME', 'FORMAT_VERSION', 'ModelFileError', 'TrainingProgress', 'atomic_write',
        'buffers_digest', 'data_digest', 'decode_state', 'encode_state', 'expected_param_count',
        'layer_table', 'load', 'load_with_manifest', 'read_checkpoint', 'read_manifest',
        'restore_checkpoint', 'save', 'write_checkpoint'
    ],
    'minscale.kernels': [
        'ACTIVATION_CODES', 'BACKENDS', 'get_backend', 'impl', 'set_backend'
    ],
    'minscale.layers': [
        'ACTIVATIONS', 'Dense', 'INITIALIZERS', 'activation_derivative', 'dense_backward',
        'dense_forward', 'glorot_uniform', 'he_normal', 'identity', 'leaky_relu', 'relu', 'sigmoid',
        'tanh', 'zeros'
    ],
    'minscale.losses': [
        'REDUCTIONS', 'check_reduction', 'mse', 'mse_grad'
    ],
    'minscale.model': [
        'Sequential', 'check_X'
    ],
    'minscale.optim': [
        'Adam', 'SGD', 'adam_step', 'deserialize', 'get', 'serialize', 'sgd_step'
    ],
    'minscale.parallel': [
        'CommAbortedError', 'CommError', 'CommTimeoutError', 'Communicator', 'LocalComm', 'MODES',
        'MPIComm', 'SharedArray', 'SharedArraySpec', 'SharedMemoryComm', 'SharedMemoryCommSpec',
        'SharedMemoryGroup', 'WorkerError', 'abort_mpi_job', 'abort_on_error',
        'combine_epoch_losses', 'fit_workers', 'install_abort_excepthook', 'reduce_in_rank_order',
        'relink_model', 'run_workers', 'shard_bounds', 'synchronized_observers'
    ],
    'minscale.parallel.base': [
        'CommAbortedError', 'CommError', 'CommTimeoutError', 'Communicator', 'REDUCE_OPS',
        'WorkerError', 'check_buffer', 'check_op', 'check_root', 'reduce_in_rank_order',
        'shard_bounds'
    ],
    'minscale.parallel.local': [
        'LocalComm'
    ],
    'minscale.parallel.mpi': [
        'MPIComm', 'abort_mpi_job', 'abort_on_error', 'import_mpi', 'install_abort_excepthook'
    ],
    'minscale.parallel.shm': [
        'DEFAULT_TIMEOUT', 'SharedArray', 'SharedArraySpec', 'SharedMemoryComm',
        'SharedMemoryCommSpec', 'SharedMemoryGroup', 'pack_exception', 'run_workers',
        'unpack_exception'
    ],
    'minscale.parallel.trainer': [
        'MODES', 'combine_epoch_losses', 'fit_workers', 'relink_model', 'synchronized_observers'
    ],
    'minscale.prune': [
        'ConstantSparsity', 'FORMATS', 'METHODS', 'PolynomialDecaySparsity', 'SparseDense',
        'SparseModel', 'ToleranceResult', 'apply_mask', 'global_magnitude_masks', 'magnitude_mask',
        'model_nbytes', 'n_to_prune', 'polynomial_decay_sparsity', 'prune', 'prune_to_tolerance',
        'random_mask', 'restore', 'should_prune_at', 'shrink', 'sparsity_of', 'strip',
        'structured_mask', 'to_sparse'
    ],
    'minscale.quant': [
        'ACTIVATION_SPECS', 'ActivationFakeQuantizer', 'FLOAT32_EPS', 'FRAC_BITS_LIMIT',
        'INT32_MAX', 'INT32_MIN', 'INTEGER_ACTIVATIONS', 'MULTIPLIER_LIMIT', 'MinMaxObserver',
        'MovingAverageMinMaxObserver', 'QATConfig', 'QFormat', 'QuantizedDense', 'QuantizedModel',
        'REQUANTIZE_ROUNDINGS', 'ROUNDING_MODES', 'WeightFakeQuantizer', 'WeightSpec',
        'affine_qparams', 'bias_safe_weight_scale', 'calibration_ranges', 'channel_min_max',
        'choose_frac_bits', 'code_dtype', 'compression_ratio', 'convert', 'dequantize',
        'dequantize_affine', 'fake_quantize', 'fake_quantize_grad_mask', 'int_matmul',
        'integer_range', 'multiply_by_quantized_multiplier', 'prepare_qat', 'qat_config',
        'quantize', 'quantize_affine', 'quantize_bias', 'quantize_layer_weights', 'quantize_model',
        'quantize_multiplier', 'quantize_weights', 'quantized_nbytes', 'requantize', 'round_values',
        'rounding_divide_by_pot', 'saturating_rounding_doubling_high_mul', 'strip_qat',
        'weight_spec'
    ],
    'minscale.report': [
        'CSV_COLUMNS', 'csv_rows', 'format_bytes', 'format_number', 'format_seconds',
        'format_table', 'load_schema', 'plot', 'plot_formats', 'render_text', 'write_csv',
        'write_json'
    ],
    'minscale.schedules': [
        'Constant', 'ExponentialDecay', 'InverseTimeDecay', 'PolynomialDecay', 'deserialize',
        'exponential_decay', 'get', 'inverse_time_decay', 'polynomial_decay', 'serialize'
    ],
    'minscale.sizes': [
        'aligned_bytes', 'bitmask_bytes', 'codes_bytes', 'compression_ratio', 'csr_bytes',
        'packed_bytes', 'param_count'
    ],
    'minscale.study': [
        'EpochClock', 'SCHEMA_VERSION', 'StudyConfig', 'combined_part', 'first_reached',
        'fixed_point_weights', 'gradual_schedule', 'int8_model', 'learning_rate_sweep',
        'loss_target', 'measure', 'median_seconds', 'pareto_front', 'pruning_part',
        'quantization_part', 'run_study', 'smallest_within', 'sparse_codes_nbytes', 'summarize',
        'workers_part'
    ],
    'minscale.testing': [
        'architectures', 'assert_masks_preserved', 'check_gradients', 'data_sets', 'models',
        'models_and_data', 'numeric_gradient', 'qformats', 'relative_error', 'sparsities',
        'weight_arrays'
    ],
    'minscale.train': [
        'BLOWUP_FACTOR', 'Callback', 'DivergenceError', 'History', 'divergence_limit', 'fit',
        'shard_bounds'
    ],
}

#: modules without ``__all__`` -> their public functions and classes on main before the split
DEFINED = {
    'minscale.commands': [],
    'minscale.commands.demo': [
        'add_arguments', 'least_squares_line', 'run'
    ],
    'minscale.commands.evaluate': [
        'add_arguments', 'data_options', 'evaluate_model', 'run'
    ],
    'minscale.commands.info': [
        'add_arguments', 'format_info', 'run'
    ],
    'minscale.commands.prune': [
        'add_arguments', 'check_options', 'run'
    ],
    'minscale.commands.quantize': [
        'add_arguments', 'check_options', 'run', 'weight_spec_from_args'
    ],
    'minscale.commands.study': [
        'add_arguments', 'check_outputs', 'run'
    ],
    'minscale.commands.train': [
        'add_arguments', 'build_model', 'check_parallel_options', 'recorded_data', 'run'
    ],
}

#: public kernels of the reference backend (``minscale.kernels._numpy``); every backend has them
KERNELS = [
    'PackedWeights', 'act_backward', 'adam_update', 'bias_act', 'count_zeros',
    'dequantize_affine', 'dequantize_fixed', 'fake_quantize', 'int8_dense_packed',
    'int8_matmul', 'int8_matmul_packed', 'keep_all_but_smallest', 'momentum_update',
    'pack_int8_weights', 'quantize_affine', 'quantize_affine_checked', 'quantize_fixed',
    'requantize', 'sgd_update'
]

#: names deliberately added by the refactor, per module (each documented in docs/)
ADDED = {
    "minscale.kernels": ["compiled_epochs",
                         # issue 18: compiled shared-memory collectives and data-parallel epochs
                         "compiled_collectives", "compiled_data_parallel_epochs"],
    # robustness fixes landed beside the split: stale temporaries, bounded waits, timeouts
    "minscale.io": ["STALE_TEMP_SECONDS", "remove_stale_temporaries"],
    "minscale.parallel.base": ["DEFAULT_TIMEOUT", "TIMEOUT_ENV", "check_timeout",
                               "default_timeout"],
    "minscale.parallel.shm": ["BoundedBarrier", "check_not_bootstrapping", "exit_with_parent",
                              "process_gone"],
    # C99 / ONNX export and integer-only fixed point
    "minscale": ["export", "regularizers"],
    # regularization: decoupled weight decay
    "minscale.optim": ["AdamW"],
    # issue 15: seeds and intervals in the study's tables
    "minscale.report": ["format_interval", "PLOT_PANELS", "plot_width_depth"],
    "minscale.quant": ["FIXED_ROUNDINGS", "FIXED_SPECS", "FixedDense", "FixedPointModel",
                       "fixed_frac_range", "fixed_shift_round", "quantize_fixed_model"],
    # pipeline schedules as data (issue 17)
    "minscale.parallel": ["PIPELINE_SCHEDULES", "ScheduleSimulation", "bubble_fraction",
                          "pipeline_schedule", "predict_step_times", "simulate_schedule"],
    # pipeline training (issue 17)
    "minscale.commands.train": ["check_pipeline_options"],
    # issue 15, recovery part: lottery-ticket rewinding (the width/depth panel: report above)
    "minscale.prune": ["WeightSnapshots", "reinitialize", "rewind"],
    # issue 15: the shipped MNIST subset
    "minscale.datasets": ["load_mnist5k"],
}


@pytest.mark.parametrize("module_name", sorted(ALL))
def test_all_is_unchanged(module_name):
    module = importlib.import_module(module_name)
    expected = sorted(set(ALL[module_name]) | set(ADDED.get(module_name, ())))
    assert sorted(module.__all__) == expected


@pytest.mark.parametrize("module_name", sorted(ALL))
def test_every_name_in_all_resolves(module_name):
    module = importlib.import_module(module_name)
    missing = [name for name in ALL[module_name] if not hasattr(module, name)]
    assert not missing, f"{module_name} lost {missing}"


@pytest.mark.parametrize("module_name", sorted(DEFINED))
def test_modules_without_all_keep_their_names(module_name):
    module = importlib.import_module(module_name)
    missing = [name for name in DEFINED[module_name] if not hasattr(module, name)]
    assert not missing, f"{module_name} lost {missing}"


def test_top_level_all():
    import minscale as ms
    assert sorted(ms.__all__) == sorted(ALL["minscale"] + ADDED["minscale"])
    for name in ms.__all__:
        assert getattr(ms, name) is not None


def test_every_backend_has_the_reference_kernels():
    from minscale.kernels import _numpy
    missing = [name for name in KERNELS if not hasattr(_numpy, name)]
    assert not missing, f"minscale.kernels._numpy lost {missing}"
    try:
        from minscale.kernels import _numba
    except ImportError:
        pytest.skip("numba is not installed")
    missing = [name for name in KERNELS if not hasattr(_numba, name)]
    assert not missing, f"minscale.kernels._numba lacks {missing}"
