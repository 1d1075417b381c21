"""Data-parallel training: the Communicator protocol and its backends.

- `LocalComm`: one process (the oracle for tests).
- `SharedMemoryComm`: k processes on one machine (multiprocessing + shared memory),
  launched by `run_workers`.
- `MPIComm`: k processes anywhere, over mpi4py (imported only when an MPIComm is created).
- `synchronized_observers`: QAT observers that see the global batch (:mod:`.observers`).
- `fit_workers`: ``fit(..., workers=k, mode="sync"|"async")`` on one machine.
- `pipeline_schedule`, `simulate_schedule`: pipeline schedules (GPipe, 1F1B) as data, and
  their step time, bubble and stashed activations (:mod:`.schedule`).

`fit_workers`, `relink_model`, `combine_epoch_losses` and `MODES` are defined in
:mod:`minscale.train.workers` (training sits above the communicators) and loaded on first
access (PEP 562 ``__getattr__``): a static import would make parallel and train import each
other. ``from minscale.parallel import fit_workers`` works as before.
"""

from . import trainer  # the public path minscale.parallel.trainer; its lazy names below
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
from .observers import synchronized_observers
from .schedule import (
    PIPELINE_SCHEDULES,
    ScheduleSimulation,
    bubble_fraction,
    pipeline_schedule,
    predict_step_times,
    simulate_schedule,
)
from .shm import (
    SharedArray,
    SharedArraySpec,
    SharedMemoryComm,
    SharedMemoryCommSpec,
    SharedMemoryGroup,
    run_workers,
)

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
    # pipeline schedules
    "PIPELINE_SCHEDULES",
    "ScheduleSimulation",
    "bubble_fraction",
    "pipeline_schedule",
    "predict_step_times",
    "simulate_schedule",
]

def __getattr__(name):
    # the trainer's names: minscale.parallel.trainer loads them from minscale.train.workers on
    # first access (a static import would make parallel and train import each other)
    if name in trainer.__all__:
        value = getattr(trainer, name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(trainer.__all__))
