"""Run under ``mpiexec -n 3``: ``MPIComm.allreduce_in_rank_order`` on values whose sum depends
on the order of addition.

Usage: ``mpiexec -n 3 python tests/parallel/mpi_ordered.py OUT_DIR``. Each rank writes the
results' bytes (hex, so signed zeros and last bits count) to ``OUT_DIR/rank<r>.json``;
tests/parallel/test_comm.py checks them against the rank-order sums worked by hand.
``python tests/parallel/mpi_ordered.py OUT_DIR skip`` -- rank 1 never calls the collective:
rank 0 must abort the job after ``MINSCALE_COMM_TIMEOUT`` seconds.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from minscale.parallel import MPIComm

#: Column j holds what ranks 0, 1, 2 contribute to element j (see the test for the sums).
COLUMNS64 = [[1e16, 1.0, 1.0], [1.0, 1.0, 1e16], [1.0, 1e16, 1.0], [1e16, -1e16, 1.0],
             [1.0, 1e16, -1e16], [-1e16, 1.0, 1e16], [-0.0, -0.0, -0.0]]
COLUMNS32 = [[1e8, 4.0, 4.0], [4.0, 4.0, 1e8]]


def main(out, how):
    comm = MPIComm()
    if how == "skip":
        if comm.rank != 1:
            comm.allreduce_in_rank_order(np.ones(3))
        time.sleep(30)  # rank 1 stays alive, never joining: only the deadline ends the job
        return
    r = comm.rank
    # every column repeated 1000 times: long enough that MPI's own algorithms split it up
    buf = np.array([col[r] for col in COLUMNS64] * 1000)
    assert comm.allreduce_in_rank_order(buf) is buf
    buf32 = np.array([col[r] for col in COLUMNS32], dtype=np.float32)
    comm.allreduce_in_rank_order(buf32)
    peak = np.array([[-1.0, 2.0], [5.0, -3.0], [0.5, 0.25]][r]).reshape(1, 2)
    comm.allreduce_in_rank_order(peak, op="max")
    report = {
        "size": comm.size,
        "sum": buf.tobytes().hex(),
        "sum32": buf32.tobytes().hex(),
        "max": peak.tolist(),
    }
    Path(out, f"rank{r}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ok")
