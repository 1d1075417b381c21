"""The scaling study: what learning rate, pruning, quantization and more workers do to one
model's held-out loss, size and speed, measured on real data.

:func:`run_study` runs five parts on one split of one data set and returns a JSON-ready dict
(schema: ``docs/study.md`` and ``minscale/study_schema.json``):

1. learning rate: Adam with inverse-time decay over a grid of initial rates and decay rates,
   each run from the same initial weights; final held-out loss and the first update at which a
   loss target is reached. The run with the lowest final held-out loss becomes the baseline.
2. pruning: magnitude (layer-wise), global and random masks at each sparsity, each applied to a
   copy of the baseline and fine-tuned with the same budget, plus gradual (polynomial) pruning
   to the top level with the same budget.
3. quantization: fixed point at several bit widths (frac bits chosen per tensor) and int8
   affine per channel, post-training (PTQ) and quantization-aware (QAT, same budget).
4. combined: pruning and int8 together against the float baseline.
5. workers: the baseline's training with 1 and 2 synchronous data-parallel workers.

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

from . import han2015  # noqa: F401  (registers the han2015 part of `minscale study`)
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
