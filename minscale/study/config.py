"""The study's configuration: budgets, grids and the result layout's version."""
from __future__ import annotations

import dataclasses

from .._checks import check_int, check_real
from ..data import plain
from ..prune import METHODS

__all__ = ["StudyConfig", "SCHEMA_VERSION"]

#: version of the result layout (``docs/study.md``); bumped on incompatible changes
SCHEMA_VERSION = 2

#: the study's parts, in the order they run and print; ``--part`` takes these names (and those
#: of parts registered with :func:`minscale.study.runs.register_part`)
PARTS = ("learning_rate", "pruning", "quantization", "combined", "regularization", "workers")

#: bits per stored value of a float model in every byte count of the study (float32)
FLOAT_BITS = 32


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """What the study measures and with which budgets.

    Parameters
    ----------
    hidden : tuple of int, default (32,)
        Hidden layer widths (ReLU, He-normal init); the output layer is linear.
    epochs : int, >= 1, default 50
        Epochs of every learning-rate run (the baseline is one of them).
    finetune_epochs : int, >= 1, default 10
        The same fine-tuning budget for every pruned and QAT variant.
    finetune_factor : float, > 0, default 0.1
        Fine-tuning runs Adam at the constant rate finetune_factor * (the baseline's initial
        rate): large enough to recover from pruning within the budget, small enough not to
        undo the training (the baseline's last rate can be orders of magnitude smaller).
    worker_epochs : int, >= 1, default 5
        Epochs of each run of the workers part.
    batch_size : int, >= 1, default 32
    seed : int, >= 0, default 0
        The first seed: seed i of ``seeds`` is ``seed + i`` (:func:`minscale.study.seeds.
        study_seeds`); it seeds the initial weights, shuffling and random masks. The data
        split is the caller's (``load_task`` uses ``--seed`` for it) and stays fixed.
    seeds : int, >= 1, default 3
        Repeats of every measurement from different seeds (``--seeds``; ``--quick``: 1).
    jobs : int, >= 1, default 1
        Worker processes running the seeds (``--jobs``); the numbers do not depend on it.
    validation_size : float in (0, 1), default 0.2
        Fraction of the training split the caller carved off as the validation split (recorded
        here; :func:`minscale.commands._common.load_task` does the carving).
    parts : tuple of str, default: every part of :data:`PARTS`
        The parts to run (``--part``); the learning-rate part also runs when one of them
        needs its baseline (:func:`minscale.study.runs.needs_baseline`).
    l2_strengths : tuple of float, default (1e-5, 1e-4, 1e-3, 1e-2)
        Keras L2 strengths of the regularization part (``regularizers.L2``, kernels only).
    decay_strengths : tuple of float, default (1e-3, 1e-2, 1e-1, 1.0)
        Decoupled weight decays of the regularization part (``optim.AdamW``).
    depths : tuple of int or None, default None
        Depths (hidden layers) of the width/depth part (``--depth N``: 1 .. N); None keeps
        that part's preset (1 and 2).
    learning_rates : tuple of float, default (0.1, 0.01, 0.001)
        Initial rates eta0 of Adam.
    decay_rates : tuple of float, default (0.0, 0.1, 1.0)
        Inverse-time decay rates with ``decay_steps`` = one epoch of updates:
        eta(t) = eta0 / (1 + decay_rate * t / updates_per_epoch).
    target_factor : float, default 1.1
        Loss target = target_factor * best final held-out loss of the sweep.
    sparsities : tuple of float, default (0, 0.5, 0.7, 0.8, 0.9, 0.95)
    prune_methods : tuple of str, default ("magnitude", "global", "random")
    fixed_point_bits : tuple of int, default (16, 8, 6, 4)
    combined_sparsity : float, default 0.9
    workers : tuple of int, default (1, 2)
    timing_repeats : int, >= 1, default 5
        Repeats of each timed prediction (the median is reported).
    blas_threads : int or None, default 1
        BLAS threads while the study runs (threadpoolctl), so that dense and CSR predictions
        and 1 vs k workers (each worker gets 1) compare like with like; the study's small
        matrices gain nothing from more, and on a busy machine a multi-threaded GEMM of a few
        hundred rows can take 100x longer while its threads wait for each other. None keeps
        the library default.
    tolerance : float, default 0.05
        "Within 5% of the baseline loss" of the summary.
    quick : bool, default False
        Recorded in the result; :meth:`preset` sets the small budgets.

    Raises
    ------
    ValueError, TypeError
        An argument out of range, naming it.
    """

    hidden: tuple = (32,)
    epochs: int = 50
    finetune_epochs: int = 10
    finetune_factor: float = 0.1
    worker_epochs: int = 5
    batch_size: int = 32
    seed: int = 0
    seeds: int = 3
    jobs: int = 1
    validation_size: float = 0.2
    parts: tuple = PARTS
    l2_strengths: tuple = (1e-5, 1e-4, 1e-3, 1e-2)
    decay_strengths: tuple = (1e-3, 1e-2, 1e-1, 1.0)
    depths: tuple | None = None
    learning_rates: tuple = (0.1, 0.01, 0.001)
    decay_rates: tuple = (0.0, 0.1, 1.0)
    target_factor: float = 1.1
    sparsities: tuple = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
    prune_methods: tuple = ("magnitude", "global", "random")
    fixed_point_bits: tuple = (16, 8, 6, 4)
    combined_sparsity: float = 0.9
    workers: tuple = (1, 2)
    timing_repeats: int = 5
    blas_threads: int | None = 1
    tolerance: float = 0.05
    quick: bool = False

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(check_int("hidden[i]", h, 1)
                                                 for h in self.hidden))
        for name in ("epochs", "finetune_epochs", "worker_epochs", "batch_size",
                     "timing_repeats"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0))
        object.__setattr__(self, "seeds", check_int("seeds", self.seeds, 1))
        object.__setattr__(self, "jobs", check_int("jobs", self.jobs, 1))
        object.__setattr__(self, "validation_size",
                           check_real("validation_size", self.validation_size, 0.0, 1.0,
                                      lo_open=True, hi_open=True))
        parts = tuple(self.parts)
        if not parts or any(not isinstance(p, str) for p in parts):
            raise ValueError(f"parts must be a non-empty sequence of part names, got "
                             f"{plain(self.parts)!r}")
        object.__setattr__(self, "parts", parts)
        for name in ("l2_strengths", "decay_strengths"):
            grid = tuple(check_real(f"{name}[i]", v, lo=0.0, lo_open=True)
                         for v in getattr(self, name))
            if not grid:
                raise ValueError(f"{name} must hold at least one strength")
            object.__setattr__(self, name, grid)
        lrs = tuple(check_real("learning_rates[i]", v, lo=0.0, lo_open=True)
                    for v in self.learning_rates)
        decays = tuple(check_real("decay_rates[i]", v, lo=0.0) for v in self.decay_rates)
        if not lrs or not decays:
            raise ValueError("learning_rates and decay_rates must each hold at least one value")
        if self.depths is not None:
            depths = tuple(check_int("depths[i]", d, 1) for d in self.depths)
            if not depths:
                raise ValueError("depths must hold at least one depth, or be None")
            object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "learning_rates", lrs)
        object.__setattr__(self, "decay_rates", decays)
        object.__setattr__(self, "finetune_factor",
                           check_real("finetune_factor", self.finetune_factor, lo=0.0,
                                       lo_open=True))
        object.__setattr__(self, "target_factor",
                           check_real("target_factor", self.target_factor, lo=1.0))
        sp = tuple(check_real("sparsities[i]", s, 0.0, 1.0) for s in self.sparsities)
        if not sp or list(sp) != sorted(set(sp)):
            raise ValueError("sparsities must be distinct and increasing,"
                             f" got {plain(self.sparsities)!r}")
        object.__setattr__(self, "sparsities", sp)
        for m in self.prune_methods:
            if m not in METHODS:
                raise ValueError(f"prune_methods must hold names of {METHODS}, got {m!r}")
        object.__setattr__(self, "prune_methods", tuple(self.prune_methods))
        bits = tuple(check_int("fixed_point_bits[i]", b, 2) for b in self.fixed_point_bits)
        if any(b > 32 for b in bits):
            raise ValueError("fixed_point_bits must be in 2..32,"
                             f" got {plain(self.fixed_point_bits)!r}")
        object.__setattr__(self, "fixed_point_bits", bits)
        object.__setattr__(self, "combined_sparsity",
                           check_real("combined_sparsity", self.combined_sparsity, 0.0, 1.0))
        object.__setattr__(self, "workers", tuple(check_int("workers[i]", k, 1)
                                                  for k in self.workers))
        if self.blas_threads is not None:
            object.__setattr__(self, "blas_threads",
                               check_int("blas_threads", self.blas_threads, 1))
        object.__setattr__(self, "tolerance", check_real("tolerance", self.tolerance, lo=0.0))
        object.__setattr__(self, "quick", bool(self.quick))

    @classmethod
    def preset(cls, quick=False, **overrides):
        """The full (default) or ``--quick`` budgets, with `overrides` on top.

        Quick: 10 epochs per learning-rate run, 2 fine-tuning epochs, 3 epochs per workers
        run, 3 timing repeats, 1 seed; every part and grid point is still measured.

        Returns
        -------
        StudyConfig
        """
        base = dict(epochs=10, finetune_epochs=2, worker_epochs=3, timing_repeats=3,
                    seeds=1, quick=True) if quick else {}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def to_dict(self):
        """JSON-ready dict of the fields (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}
