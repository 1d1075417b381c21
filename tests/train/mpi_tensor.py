"""Run under ``mpiexec -n k``: tensor-parallel training of tensor_case's model over MPIComm.

``python tests/train/mpi_tensor.py OUT K`` -- tensor_parallel=K (the job's size / K
data-parallel replicas); every rank writes ``OUT/rank<r>.npz`` (its caller model's parameters
after the gather, and the loss history).
``python tests/train/mpi_tensor.py OUT K fail`` -- rank 1 raises at step 3: the job must abort
non-zero.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tensor_case import OPTIONS, FailOnRank, make_case  # noqa: E402

from minscale.parallel import MPIComm  # noqa: E402


def main(out, k, how):
    comm = MPIComm(timeout=60)
    model, X, y = make_case()
    callbacks = [FailOnRank(1, 3)] if how == "fail" else []
    history = model.fit(X, y, tensor_parallel=k, comm=comm, callbacks=callbacks,
                        **OPTIONS)
    np.savez(Path(out) / f"rank{comm.rank}.npz", params=model.params,
             loss=np.array(history.history["loss"]))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "ok")
