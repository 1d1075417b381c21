"""Training: fit, its loop, callbacks, history and divergence, the compiled path.

One loop serves one process and every data-parallel worker: with a communicator of size k,
each global batch is split into k contiguous shards, each rank computes the gradient of its
shard scaled by the *global* batch size (so the shard gradients add up to the batch
gradient), one allreduce sums them (the batch loss rides along in the same buffer), and every
rank applies the same update.

Modules: :mod:`~minscale.train.history` (History, DivergenceError, the divergence limit),
:mod:`~minscale.train.callbacks`, :mod:`~minscale.train.progress`, :mod:`~minscale.train.loop`
(the loop), :mod:`~minscale.train.compiled` (the compiled path), :mod:`~minscale.train.workers`
(k worker processes on one machine, over :mod:`minscale.parallel`'s communicators),
:mod:`~minscale.train.fit`.
"""
from __future__ import annotations

from ..parallel.base import shard_bounds
from .callbacks import Callback
from .fit import BYTES_PER_UPDATE, check_updates, fit  # noqa: F401  (the CLI sizes runs)
from .history import BLOWUP_FACTOR, DivergenceError, History, divergence_limit
from .loop import run  # noqa: F401  (the loop on validated arrays; the workers call it)

__all__ = ["History", "DivergenceError", "BLOWUP_FACTOR", "divergence_limit", "Callback", "fit",
           "shard_bounds"]
