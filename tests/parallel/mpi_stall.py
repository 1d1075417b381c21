"""Run under ``mpiexec -n 2``: rank 1 misbehaves at update 5 of ``model.fit(comm=MPIComm())``.

``python tests/parallel/mpi_stall.py stop`` -- rank 1 stops itself (SIGSTOP), as a debugger or a
swapped-out node would; ``python tests/parallel/mpi_stall.py exit`` -- rank 1 leaves with exit status 0
mid-training. Either way rank 0 is left waiting in its next allreduce: the per-collective
timeout (``MINSCALE_COMM_TIMEOUT``) must turn that into an abort with a message and a
non-zero exit instead of a hang or a silent exit 0. A second argument ``single`` starts MPI
with ``MPI_THREAD_SINGLE``, where MPIComm polls instead of using its watchdog thread.
"""

import os
import signal
import sys

import mpi4py
import numpy as np

if sys.argv[2:] == ["single"]:
    mpi4py.rc.thread_level = "single"  # must precede the first import of mpi4py.MPI
from mpi4py import MPI  # noqa: E402

import minscale as ms  # noqa: E402
from minscale.parallel import MPIComm  # noqa: E402
from minscale.train import Callback  # noqa: E402


class Misbehave(Callback):
    """On rank `rank`, at update `step`: stop the process or exit with status 0."""

    def __init__(self, rank, step, how):
        self.rank, self.step, self.how = rank, step, how

    def on_step_begin(self, model, step):
        if step != self.step or MPI.COMM_WORLD.Get_rank() != self.rank:
            return
        if self.how == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        else:
            sys.exit(0)


def main(how):
    comm = MPIComm()
    X = np.linspace(-1, 1, 64).reshape(-1, 1)
    model = ms.Sequential([ms.Dense(4, activation="tanh"), ms.Dense(1)], input_dim=1, seed=0)
    model.compile(optimizer="sgd")
    model.fit(X, 2 * X, epochs=100_000, batch_size=8, comm=comm, callbacks=[Misbehave(1, 5, how)])
    print(f"rank {comm.rank} finished training: the misbehaving rank went unnoticed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
