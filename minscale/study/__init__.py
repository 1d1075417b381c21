"""The scaling study: what learning rate, pruning, quantization, regularization and more
workers do to one model's test loss, size and speed, measured on real data from several seeds.

:func:`run_study` runs six parts on one split of one data set (train / validation / test)
and returns a JSON-ready dict (schema: ``docs/study.md`` and ``minscale/study_schema.json``):

1. learning rate: Adam with inverse-time decay over a grid of initial rates and decay rates,
   each run from the same initial weights; the grid point with the lowest mean final
   validation loss over the seeds becomes the baseline.
2. pruning: magnitude (layer-wise), global and random masks at each sparsity, iterative with
   the same fine-tuning budget, plus gradual (polynomial) pruning; each against the dense
   baseline fine-tuned alike.
3. quantization: fixed point at several bit widths and int8 affine per channel, PTQ and QAT;
   int8 against the float model clamped to the same ranges.
4. combined: pruning and int8 together.
5. regularization: L2 and decoupled weight decay over a log grid; best strength on validation.
6. workers: the baseline's training with 1 and 2 synchronous data-parallel workers.

Every variant reports its mean test loss over the seeds with a 95 % interval, its control's,
the effect (their ratio) and a verdict from the paired interval
(:mod:`minscale.study.seeds`, :mod:`minscale.study.stats`).

Units. Every loss is the held-out MSE (:func:`minscale.losses.mse`, mean over rows, summed
over outputs). Regression targets are standardized with the training split's mean and
deviation, so a loss is a fraction of the target's variance (1.0 = predicting the mean);
classification targets are one-hot and accuracy is reported beside the loss. Bytes are exact
storage sizes, with float32 (4 bytes per value) as the reference for every float model, so
compression ratios compare against a float32 deployment. Times are in seconds.

The package: :mod:`minscale.study.metrics` holds the pure definitions (loss target, Pareto
set, sizes, summary), :mod:`minscale.study.config` the :class:`StudyConfig`, and
:mod:`minscale.study.runs` the parts and :func:`run_study`; this module re-exports them.
"""
from __future__ import annotations

# each registers its part of `minscale study` (runs.register_part) when imported
from . import han2015, model_parallel, recovery, width_depth  # noqa: F401
from .config import SCHEMA_VERSION, StudyConfig
from .metrics import (
                      first_reached,
                      fixed_point_weights,
                      gradual_schedule,
                      loss_target,
                      pareto_front,
                      smallest_within,
                      sparse_codes_nbytes,
                      summarize,
)
from .runs import (
                      EpochClock,
                      combined_part,
                      int8_model,
                      learning_rate_sweep,
                      measure,
                      median_seconds,
                      pruning_part,
                      quantization_part,
                      run_study,
                      workers_part,
)

__all__ = [
    "StudyConfig",
    "loss_target",
    "first_reached",
    "pareto_front",
    "smallest_within",
    "median_seconds",
    "fixed_point_weights",
    "gradual_schedule",
    "sparse_codes_nbytes",
    "int8_model",
    "quantization_part",
    "combined_part",
    "pruning_part",
    "workers_part",
    "EpochClock",
    "summarize",
    "measure",
    "learning_rate_sweep",
    "run_study",
    "SCHEMA_VERSION",
]
