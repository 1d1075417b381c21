"""``minscale train``: train a dense network on a data set and report train/test loss."""
from __future__ import annotations

import os

from ..datasets import NAMES
from ..io import save
from ..optim import SGD, Adam, AdamW
from ..optim import get as get_optimizer
from ..parallel import MPIComm
from ..parallel.tensor import check_tensor_parallel
from ..schedules import InverseTimeDecay
from ..study.runs import build_model
from ..train import check_updates
from ._common import (
    add_data_arguments,
    add_regularization_arguments,
    check_at_least,
    check_output_path,
    check_regularization_options,
    divergence_reported,
    hidden_sizes,
    integer,
    load_task,
    set_l2,
)

NAME = "train"
HELP = "train a dense network with inverse-time learning-rate decay"


def add_arguments(parser):
    """Register the train command's options on `parser`."""
    add_data_arguments(parser)
    parser.add_argument("--hidden", type=hidden_sizes, default=[32],
                        help="hidden layer sizes, e.g. 32,32 (default: 32; '' for none: a "
                             "linear model)")
    parser.add_argument("--activation", default=None,
                        choices=("relu", "leaky_relu", "tanh", "sigmoid", "identity"),
                        help="activation of the hidden layers (default: relu)")
    parser.add_argument("--epochs", type=integer, default=100)
    parser.add_argument("--batch-size", type=integer, default=32)
    parser.add_argument("--optimizer", default="adam", choices=("sgd", "momentum", "adam"))
    parser.add_argument("--lr", type=float, default=0.01, help="initial learning rate eta0")
    parser.add_argument("--decay-rate", type=float, default=0.0)
    parser.add_argument("--decay-steps", type=float, default=1.0, help="in optimizer updates")
    parser.add_argument("--staircase", action="store_true")
    add_regularization_arguments(parser)
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--workers", type=integer, default=1,
                        help="data-parallel worker processes on this machine, 1 .. the "
                             "number of training rows (default: 1)")
    parser.add_argument("--mode", default="sync", choices=("sync", "async"),
                        help="async: asynchronous updates by --workers >= 2 processes of "
                             "this machine (not with --comm mpi)")
    parser.add_argument("--comm", default="local", choices=("local", "mpi"),
                        help="mpi: run as one rank under mpiexec")
    parser.add_argument("--tensor-parallel", type=integer, default=1, metavar="K",
                        help="split every pair of Dense layers over K processes (Megatron "
                             "style; with --comm mpi, K = the ranks of mpiexec -n K; default 1)")
    parser.add_argument("--pipeline-stages", type=integer, default=1, metavar="P",
                        help="pipeline-parallel training: cut the layers into P stages, one "
                             "process each, times --workers D data-parallel replicas (with "
                             "--comm mpi: the mpiexec ranks, -n D*P); "
                             "1 .. the number of layers (default: 1)")
    parser.add_argument("--micro-batches", type=integer, default=1, metavar="M",
                        help="split every batch into M micro-batches whose gradients add up "
                             "(default: 1)")
    # default None: a --schedule given without a pipeline is refused, not silently ignored
    parser.add_argument("--schedule", default=None, choices=("gpipe", "1f1b"),
                        help="pipeline schedule, with --pipeline-stages > 1 (default: gpipe)")
    parser.add_argument("--save", default=None, metavar="PATH", help="save the model (.npz)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch output")


def check_parallel_options(args):
    """Reject --workers / --mode / --comm combinations before any work.

    Raises
    ------
    ValueError
        --workers < 1 or above 8 x the CPU count; --staircase / --decay-steps without
        --decay-rate; --comm mpi with --mode async (async runs on the worker processes of
        one machine) or with --workers other than 1; --mode async with --workers 1.
    """
    if args.workers < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {args.workers}")
    # far more processes than cores only queue behind each other at every allreduce, and
    # hundreds of them cannot all start within the group's timeout
    limit = 8 * (os.cpu_count() or 1)
    if args.workers > limit:
        raise ValueError(f"--workers must be at most 8 x the {os.cpu_count()} CPUs = {limit}, "
                         f"got {args.workers}")
    if args.decay_rate == 0 and (args.staircase or args.decay_steps != 1.0):
        raise ValueError("--staircase and --decay-steps shape the decay: give --decay-rate > 0 "
                         "with them")
    if args.comm == "mpi":
        if args.mode == "async":
            raise ValueError("--mode async runs on worker processes of one machine (--workers "
                             "N) and is not available with --comm mpi; use --mode sync under "
                             "mpiexec")
        if args.workers != 1:
            raise ValueError("--comm mpi takes its ranks from mpiexec; leave --workers at 1")
    elif args.mode == "async" and args.workers < 2:
        raise ValueError(f"--mode async needs --workers >= 2, got --workers {args.workers}")
    check_tensor_parallel_option(args)


def check_tensor_parallel_option(args):
    """Reject a bad ``--tensor-parallel`` before any work (the model's widths are checked
    once it is built).

    Raises
    ------
    ValueError
        --tensor-parallel < 1, or --workers x --tensor-parallel above 8 x the CPU count;
        > 1 with --mode async. Under --comm mpi, a rank count that is not a multiple of K is
        refused in ``run``.
    """
    k = args.tensor_parallel
    if k < 1:
        raise ValueError(f"--tensor-parallel must be an integer >= 1, got {k}")
    limit = 8 * (os.cpu_count() or 1)
    if k > limit:
        raise ValueError(f"--tensor-parallel must be at most 8 x the {os.cpu_count()} CPUs = "
                         f"{limit}, got {k}")
    if k > 1 and args.mode == "async":
        raise ValueError(f"--tensor-parallel {k} does not combine with --mode async: the "
                         "ranks of a split model run in lock-step")
    if k * args.workers > limit:
        raise ValueError(f"--workers {args.workers} x --tensor-parallel {k} = "
                         f"{args.workers * k} processes, more than 8 x the {os.cpu_count()} "
                         f"CPUs = {limit}")


def check_pipeline_options(args):
    """Reject --pipeline-stages / --micro-batches combinations before any work.

    Raises
    ------
    ValueError
        --pipeline-stages or --micro-batches below 1; more stages than the model's layers
        (``len(--hidden) + 1``); a pipeline or micro-batches with --mode async or
        --tensor-parallel > 1; micro-batches with --workers > 1 but no pipeline;
        --workers x --pipeline-stages above 8 x the CPU count; --schedule without
        --pipeline-stages > 1 (it would be ignored). Sets ``args.schedule`` to its default,
        ``"gpipe"``, when not given.
    """
    check_at_least(args.pipeline_stages, "--pipeline-stages", 1)
    check_at_least(args.micro_batches, "--micro-batches", 1)
    if args.schedule is not None and args.pipeline_stages == 1:
        raise ValueError(f"--schedule {args.schedule} needs --pipeline-stages > 1 (without a "
                         "pipeline there is no schedule)")
    if args.schedule is None:
        args.schedule = "gpipe"
    layers = len(args.hidden) + 1
    if args.pipeline_stages > layers:
        raise ValueError(f"--pipeline-stages {args.pipeline_stages} is more than the model's "
                         f"{layers} layers (--hidden {','.join(map(str, args.hidden))} and the "
                         "output layer); every stage needs one")
    if args.pipeline_stages > 1 or args.micro_batches > 1:
        if args.mode == "async":
            raise ValueError("--pipeline-stages and --micro-batches need --mode sync")
        if args.workers > 1 and args.pipeline_stages == 1:
            raise ValueError("--micro-batches combines with --workers "
                             f"{args.workers} only with --pipeline-stages > 1")
        limit = 8 * (os.cpu_count() or 1)
        if args.workers * args.pipeline_stages > limit:
            raise ValueError(f"--workers {args.workers} x --pipeline-stages "
                             f"{args.pipeline_stages} = {args.workers * args.pipeline_stages} "
                             f"processes, more than 8 x the {os.cpu_count()} CPUs = {limit}")
        if args.tensor_parallel > 1:
            raise ValueError("--pipeline-stages and --micro-batches do not combine with "
                             f"--tensor-parallel {args.tensor_parallel}")


def make_optimizer(args, schedule):
    """The optimizer of ``--optimizer``, with ``--weight-decay`` (coupled) or, with
    ``--decoupled``, AdamW."""
    if args.weight_decay is None:
        return get_optimizer(args.optimizer, schedule)
    if args.decoupled:
        return AdamW(schedule, weight_decay=args.weight_decay)
    if args.optimizer == "adam":
        return Adam(schedule, weight_decay=args.weight_decay)
    momentum = 0.9 if args.optimizer == "momentum" else 0.0
    return SGD(schedule, momentum=momentum, weight_decay=args.weight_decay)


def recorded_data(data):
    """``--data`` as a model file records it: a shipped name as is, a path made absolute.

    An absolute path lets ``minscale evaluate`` / ``prune`` / ``quantize`` find the file
    from another folder.
    """
    return data if data in NAMES else os.path.abspath(data)


def run(args):
    """Train and print the final train and test loss (and accuracy on classification)."""
    # argument mistakes are reported before any data is read or anything is printed
    check_at_least(args.epochs, "--epochs", 0)
    check_at_least(args.batch_size, "--batch-size", 1)
    check_parallel_options(args)
    check_pipeline_options(args)
    check_regularization_options(args)
    if args.activation is not None and not args.hidden:
        raise ValueError(f"--activation {args.activation}: --hidden '' builds no hidden layer "
                         "(a linear model), so there is nothing for it to apply to")
    activation = args.activation or "relu"
    if args.save is not None:
        check_output_path(args.save, "--save")
    comm = None
    if args.comm == "mpi":
        comm = MPIComm()
    rank = 0 if comm is None else comm.rank
    if comm is not None and args.pipeline_stages > 1 and comm.size % args.pipeline_stages:
        raise ValueError(f"--pipeline-stages {args.pipeline_stages} must divide the number of "
                         f"MPI ranks (mpiexec -n {comm.size}): D replicas x one rank per stage")
    task = load_task(args, args.dtype)
    n_rows = task["X_train"].shape[0]
    if args.workers > n_rows:
        raise ValueError(f"--workers must be at most the number of training rows ({n_rows}), "
                         f"got {args.workers}")
    check_updates(args.epochs, n_rows, args.batch_size, "--epochs", "--batch-size")
    schedule = InverseTimeDecay(args.lr, decay_rate=args.decay_rate,
                                decay_steps=args.decay_steps, staircase=args.staircase)
    try:
        model = build_model(task["X_train"].shape[1], task["y_train"].shape[1], args.hidden,
                            activation, args.seed, args.dtype)
    except ValueError as exc:  # a model too large for the memory: say which option made it
        raise ValueError(f"--hidden {','.join(map(str, args.hidden))}: {exc}") from None
    if args.tensor_parallel > 1:
        if comm is not None and comm.size % args.tensor_parallel:
            raise ValueError(f"--tensor-parallel {args.tensor_parallel} under --comm mpi needs "
                             f"a multiple of {args.tensor_parallel} ranks (mpiexec -n "
                             f"d*{args.tensor_parallel}), got {comm.size}")
        hidden = ",".join(map(str, args.hidden)) or "''"
        try:
            check_tensor_parallel(model, args.tensor_parallel)
        except ValueError as exc:
            raise ValueError(f"--tensor-parallel {args.tensor_parallel} with --hidden "
                             f"{hidden}: {exc}") from None
    metrics = ["accuracy"] if task["info"]["task"] == "classification" else None
    set_l2(model, args.l2)
    model.compile(optimizer=make_optimizer(args, schedule), metrics=metrics)
    with divergence_reported():
        model.fit(task["X_train"], task["y_train"], epochs=args.epochs,
                  batch_size=args.batch_size, seed=args.seed,
                  verbose=0 if args.quiet or rank else 1,
                  validation_data=(task["X_test"], task["y_test"]),
                  workers=args.workers, mode=args.mode, comm=comm,
                  tensor_parallel=args.tensor_parallel,
                  pipeline_stages=args.pipeline_stages, micro_batches=args.micro_batches,
                  schedule=args.schedule)
    if rank == 0:
        train = model.evaluate(task["X_train"], task["y_train"], return_dict=True)
        test = model.evaluate(task["X_test"], task["y_test"], return_dict=True)
        unit = "" if task["y_scale"] == 1.0 else " (standardized target)"
        print(f"data {task['info']['name']}: {task['X_train'].shape[0]} train / "
              f"{task['X_test'].shape[0]} test rows, {model.count_params()} parameters")
        print(f"final train loss {train['loss']:.6g}, test loss {test['loss']:.6g}{unit}")
        if "accuracy" in test:
            print(f"final train accuracy {train['accuracy']:.4f}, "
                  f"test accuracy {test['accuracy']:.4f}")
        if args.save:
            # lets `minscale evaluate` rebuild the same split and standardization
            model.state["data"] = {"data": recorded_data(args.data), "target": args.target,
                                   "test_size": args.test_size, "seed": args.seed}
            save(model, args.save)
            print(f"saved {args.save}")
    return 0
