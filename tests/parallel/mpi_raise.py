"""Run under ``mpiexec -n 2``: rank 1 fails before the first allreduce, rank 0 waits in it.

``python tests/parallel/mpi_raise.py`` -- rank 1 raises: MPIComm's excepthook must turn the exception
into MPI_Abort. ``python tests/parallel/mpi_raise.py exit-code`` -- rank 1 prints an error line and
calls ``abort_mpi_job(2)``, as a command line that returns exit code 2 would. Either way
mpiexec must end the whole job non-zero instead of leaving rank 0 blocked forever.
"""

import sys

import numpy as np

from minscale.parallel import MPIComm, abort_mpi_job


def main(how):
    comm = MPIComm()
    if comm.rank == 1:
        if how == "exit-code":
            print("error: rank 1 fails on purpose", file=sys.stderr, flush=True)
            abort_mpi_job(2)
        raise RuntimeError("rank 1 fails on purpose")
    comm.allreduce(np.ones(8))
    print("rank 0 passed the allreduce: the abort did not happen", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "raise")
