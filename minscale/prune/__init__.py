"""Pruning: exact magnitude, global, random and structured masks, sparsity schedules.

Conventions (``DESIGN.md``): a mask is a boolean array with ``True`` = kept; sparsity is the
fraction of zeros; asking for sparsity ``s`` of ``n`` entries prunes exactly ``round(s * n)``
of them (Python ``round``, half to even, as ``torch.nn.utils.prune`` does for a fractional
amount), and ties at the threshold are broken deterministically: the lower flat index is
pruned first.

The package re-exports the names of its modules, bottom to top:

- :mod:`~minscale.prune.masks`: the mask rules, arrays in and masks out (no model in sight);
- :mod:`~minscale.prune.schedules`: the sparsity schedules (TensorFlow Model Optimization);
- :mod:`~minscale.prune.model`: pruning a Sequential in place through its flat mask buffer
  (``model.mask``), undoing it, pruning to a loss budget, shrinking away pruned neurons;
- :mod:`~minscale.prune.recovery`: weight rewinding and re-initialization of the survivors
  (lottery tickets), and the snapshots rewinding needs;
- :mod:`~minscale.prune.sparse`: CSR inference copies and the bytes of each storage format.
"""

from __future__ import annotations

from .masks import (
    apply_mask,
    global_magnitude_masks,
    magnitude_mask,
    n_to_prune,
    random_mask,
    sparsity_of,
    structured_mask,
)
from .model import BACKUP_KEY as BACKUP_KEY  # the model.state key; not in __all__, as before
from .model import (
    METHODS,
    ToleranceResult,
    prune,
    prune_to_tolerance,
    restore,
    shrink,
    strip,
)
from .recovery import WeightSnapshots, reinitialize, rewind
from .schedules import (
    ConstantSparsity,
    PolynomialDecaySparsity,
    polynomial_decay_sparsity,
    should_prune_at,
)
from .sparse import FORMATS, SparseDense, SparseModel, model_nbytes, to_sparse

__all__ = [
    "magnitude_mask",
    "global_magnitude_masks",
    "random_mask",
    "structured_mask",
    "apply_mask",
    "sparsity_of",
    "n_to_prune",
    "polynomial_decay_sparsity",
    "should_prune_at",
    "ConstantSparsity",
    "PolynomialDecaySparsity",
    "METHODS",
    "FORMATS",
    "prune",
    "strip",
    "restore",
    "prune_to_tolerance",
    "ToleranceResult",
    "shrink",
    "to_sparse",
    "SparseModel",
    "SparseDense",
    "model_nbytes",
    "WeightSnapshots",
    "rewind",
    "reinitialize",
]
