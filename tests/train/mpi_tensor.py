"""Run under ``mpiexec -n k``: tensor-parallel training of tensor_case's model over MPIComm.

``python tests/train/mpi_tensor.py OUT K`` -- tensor_parallel=K (the job's size / K
data-parallel replicas); every rank writes ``OUT/rank<r>_sparsity<s>.npz`` for the case
pruned to 90 % (s = 0.9) and the dense one (s = 0): its caller model's parameters after the
gather, the loss history, and its own shard's parameters with their positions in the whole
model, replicated entries included.
``python tests/train/mpi_tensor.py OUT K fail`` -- rank 1 raises at step 3: the job must abort
non-zero.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tensor_case import OPTIONS, FailOnRank, make_case  # noqa: E402

from minscale.parallel import MPIComm  # noqa: E402
from minscale.train.callbacks import Callback  # noqa: E402


class KeepShard(Callback):
    """Keeps a copy of this rank's TensorShard parameters at the end of training."""

    def on_train_end(self, model, history):
        self.params, self.index = model.params.copy(), model.full_index.copy()


def main(out, k, how):
    comm = MPIComm(timeout=60)
    # 90 % pruned (the case) and dense: with most weights 0 many partial sums have a
    # single nonzero addend, which any order adds exactly; the dense case is order-sensitive
    for sparsity in (0.9, 0.0):
        model, X, y = make_case(sparsity=sparsity)
        keep = KeepShard()
        callbacks = [FailOnRank(1, 3)] if how == "fail" else [keep]
        history = model.fit(X, y, tensor_parallel=k, comm=comm, callbacks=callbacks,
                            **OPTIONS)
        np.savez(Path(out) / f"rank{comm.rank}_sparsity{sparsity:g}.npz", params=model.params,
                 loss=np.array(history.history["loss"]), shard_params=keep.params,
                 shard_index=keep.index)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "ok")
