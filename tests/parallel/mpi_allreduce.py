"""Run under ``mpiexec -n 2``: MPIComm allreduce (sum/max/min, float64/float32) and broadcast.

Usage: ``mpiexec -n 2 python tests/parallel/mpi_allreduce.py OUT_DIR``. Each rank writes what it received
to ``OUT_DIR/rank<r>.json`` (files, not stdout, because mpiexec interleaves the ranks' output);
tests/parallel/test_comm.py checks them.
"""

import json
import sys
from pathlib import Path

import numpy as np

from minscale.parallel import MPIComm


def main():
    comm = MPIComm()
    rank = comm.rank
    buf = (rank + 1.0) * np.arange(4.0)
    comm.allreduce(buf)
    buf32 = ((rank + 1.0) * np.arange(4.0)).astype(np.float32)
    comm.allreduce(buf32)
    high = np.full(2, rank + 1.0)
    comm.allreduce(high, op="max")
    low = np.full(2, rank + 1.0)
    comm.allreduce(low, op="min")
    comm.barrier()
    shared = np.full(3, 11.0) if rank == comm.size - 1 else np.zeros(3)
    comm.broadcast(shared, root=comm.size - 1)
    report = {
        "rank": rank,
        "size": comm.size,
        "sum": buf.tolist(),
        "sum32": buf32.tolist(),
        "dtype32": str(buf32.dtype),
        "max": high.tolist(),
        "min": low.tolist(),
        "bcast": shared.tolist(),
    }
    Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
