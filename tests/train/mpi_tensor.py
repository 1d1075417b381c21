"""Run under ``mpiexec -n k``: tensor-parallel training of tensor_case's model over MPIComm.

``python tests/train/mpi_tensor.py OUT`` -- every rank writes ``OUT/rank<r>.npz`` (its caller
model's parameters after the gather, and the loss history).
``python tests/train/mpi_tensor.py OUT fail`` -- rank 1 raises at step 3: the job must abort
non-zero.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tensor_case import OPTIONS, FailOnRank, make_case  # noqa: E402

from minscale.parallel import MPIComm  # noqa: E402


def main(out, how):
    comm = MPIComm(timeout=60)
    model, X, y = make_case()
    callbacks = [FailOnRank(1, 3)] if how == "fail" else []
    history = model.fit(X, y, tensor_parallel=comm.size, comm=comm, callbacks=callbacks,
                        **OPTIONS)
    np.savez(Path(out) / f"rank{comm.rank}.npz", params=model.params,
             loss=np.array(history.history["loss"]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ok")
