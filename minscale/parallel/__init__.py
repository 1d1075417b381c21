"""Data-parallel training: the Communicator protocol and its backends.

- `LocalComm`: one process (the oracle for tests).
- `SharedMemoryComm`: k processes on one machine (multiprocessing + shared memory),
  launched by `run_workers`.
- `MPIComm`: k processes anywhere, over mpi4py (imported only when an MPIComm is created).
- `fit_workers`: ``fit(..., workers=k, mode="sync"|"async")`` on one machine.
"""

from .base import (
    CommAbortedError,
    CommError,
    CommTimeoutError,
    Communicator,
    WorkerError,
    reduce_in_rank_order,
    shard_bounds,
)
from .local import LocalComm
from .mpi import MPIComm, abort_mpi_job, abort_on_error, install_abort_excepthook
from .shm import (
    SharedArray,
    SharedArraySpec,
    SharedMemoryComm,
    SharedMemoryCommSpec,
    SharedMemoryGroup,
    run_workers,
)
from .trainer import MODES, combine_epoch_losses, fit_workers, relink_model, synchronized_observers

__all__ = [
    "Communicator",
    "CommError",
    "CommAbortedError",
    "CommTimeoutError",
    "WorkerError",
    "LocalComm",
    "SharedMemoryComm",
    "SharedMemoryCommSpec",
    "SharedMemoryGroup",
    "SharedArray",
    "SharedArraySpec",
    "MPIComm",
    "abort_on_error",
    "abort_mpi_job",
    "install_abort_excepthook",
    "reduce_in_rank_order",
    "run_workers",
    "shard_bounds",
    "fit_workers",
    "relink_model",
    "combine_epoch_losses",
    "synchronized_observers",
    "MODES",
]
