"""``minscale prune``: prune a saved model, optionally fine-tune it, report loss, sparsity and size.

Example::

    minscale prune model.npz --sparsity 0.9 --method global --finetune-epochs 20 \\
        --data diabetes --out pruned.npz

The data options default to what the model file records (as for ``minscale evaluate``), so
the split and standardization are those of training.
"""
from __future__ import annotations

import math
import sys

from .._checks import check_sparsity
from ..io import load, save
from ..model import Sequential
from ..prune import FORMATS, METHODS, model_nbytes, prune, shrink
from ..train import check_updates
from ._common import (
    add_recorded_data_arguments,
    add_regularization_arguments,
    check_at_least,
    check_input_path,
    check_output_path,
    check_positive,
    check_regularization_options,
    divergence_reported,
    finetune_optimizer,
    integer,
    load_task,
    set_l2,
)
from .evaluate import data_options

NAME = "prune"
HELP = "prune a saved model (magnitude, global, random or structured) and report the cost"


def add_arguments(parser):
    """Register the prune command's options on `parser`."""
    parser.add_argument("model", help="saved model (.npz, as written by minscale train --save)")
    parser.add_argument("--sparsity", type=float, required=True,
                        help="fraction of zeros in [0, 1] (of neurons for structured)")
    parser.add_argument("--method", default="magnitude", choices=METHODS)
    parser.add_argument("--include-bias", action="store_true", help="prune the biases too")
    parser.add_argument("--norm", type=float, default=None,
                        help="L_p norm of a neuron for --method structured, >= 1 or inf "
                             "(default: 2)")
    parser.add_argument("--shrink", action="store_true",
                        help="structured: remove the pruned neurons from the saved model")
    parser.add_argument("--finetune-epochs", type=integer, default=0,
                        help="epochs of Adam on the training split after pruning, with the saved "
                             "model's weight decay and L2 regularizers (default: 0)")
    parser.add_argument("--batch-size", type=integer, default=None,
                        help="fine-tuning batch size (default: 32; needs --finetune-epochs)")
    parser.add_argument("--lr", type=float, default=None,
                        help="fine-tuning learning rate of Adam (default: 0.001; needs "
                             "--finetune-epochs)")
    add_regularization_arguments(parser, " (fine-tuning; needs --finetune-epochs)")
    parser.add_argument("--bits", type=integer, default=None,
                        help="bits per stored value in the size report (default: the model's "
                             "dtype, 64 or 32)")
    add_recorded_data_arguments(parser, "the split, of --method random and of fine-tuning")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="where to save the pruned model (.npz); not saved without it")


def _losses(model, task):
    train = model.evaluate(task["X_train"], task["y_train"], return_dict=True)
    test = model.evaluate(task["X_test"], task["y_test"], return_dict=True)
    text = f"train loss {train['loss']:.6g}, test loss {test['loss']:.6g}"
    if "accuracy" in test:
        text += f", test accuracy {test['accuracy']:.4f}"
    return text


#: defaults of the options that are only valid together with another one
NORM, LEARNING_RATE, BATCH_SIZE = 2.0, 1e-3, 32


def check_options(args):
    """Reject bad or silently ignored options before any file is read or line printed.

    Raises
    ------
    ValueError
        --sparsity outside [0, 1]; --finetune-epochs < 0; --norm not >= 1 (or inf), or
        given without --method structured; --lr not finite and > 0, or --batch-size < 1, or
        either without --finetune-epochs; --shrink without --method structured; --bits
        outside [1, 64]; an --out that cannot be written.
    """
    check_sparsity("--sparsity", args.sparsity)
    if args.method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {args.method!r}")
    if args.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if args.norm is not None:
        if args.method != "structured":
            raise ValueError(f"--norm applies to --method structured only, got --method "
                             f"{args.method}")
        if math.isnan(args.norm) or args.norm < 1:
            raise ValueError(f"--norm must be >= 1 (an L_p norm) or inf, got {args.norm!r}")
    for flag, value in (("--lr", args.lr), ("--batch-size", args.batch_size),
                        ("--l2", args.l2), ("--weight-decay", args.weight_decay),
                        ("--decoupled", args.decoupled or None)):
        if value is not None and not args.finetune_epochs:
            raise ValueError(f"{flag} applies to fine-tuning only; give --finetune-epochs N "
                             "(N >= 1) or drop it")
    check_regularization_options(args)
    if args.lr is not None:
        check_positive(args.lr, "--lr")
    if args.batch_size is not None:
        check_at_least(args.batch_size, "--batch-size", 1)
    if args.shrink and args.method != "structured":
        raise ValueError(f"--shrink needs --method structured, got --method {args.method}")
    if args.bits is not None and not 1 <= args.bits <= 64:
        raise ValueError(f"--bits must be in [1, 64], got {args.bits}")
    if args.out is not None:
        check_output_path(args.out, "--out")


def run(args):
    """Load, prune (and fine-tune), print the report, save; return the exit code."""
    check_options(args)  # argument mistakes are reported before any file is read
    model = load(check_input_path(args.model, "model"))
    if not isinstance(model, Sequential):
        raise ValueError(f"{args.model!r} holds a {type(model).__name__}; prune needs a float "
                         "Sequential model (as written by minscale train --save)")
    current = model.sparsity()["total"]
    if args.method != "structured" and args.sparsity < current:
        # prune() would bring the largest pruned weights back from the backup: that is
        # restoring, not pruning, and must not happen under this command's name
        raise ValueError(f"--sparsity {args.sparsity} is below the model's current sparsity "
                         f"{current:.4f}; pruning only adds zeros (minscale.prune.restore "
                         "brings pruned weights back)")
    options, differs = data_options(args, model.state.get("data"), args.model)
    task = load_task(options, model.dtype.name)
    if task["X_train"].shape[1] != model.input_dim:
        raise ValueError(f"the model expects {model.input_dim} features but "
                         f"{options.data!r} has {task['X_train'].shape[1]}")
    if args.finetune_epochs:
        check_updates(args.finetune_epochs, task["X_train"].shape[0],
                      BATCH_SIZE if args.batch_size is None else args.batch_size,
                      "--finetune-epochs", "--batch-size")
    for text in differs:
        print(f"minscale: note: {text}; the split and standardization differ from training",
              file=sys.stderr)
    metrics = ["accuracy"] if task["info"]["task"] == "classification" else None
    if metrics and "accuracy" not in model.metrics:
        model.metrics = list(metrics)
    bits = args.bits if args.bits is not None else model.dtype.itemsize * 8
    unit = "" if task["y_scale"] == 1.0 else " (standardized target)"
    print(f"model {args.model}: {model.count_params()} parameters, data {task['info']['name']}: "
          f"{task['X_train'].shape[0]} train / {task['X_test'].shape[0]} test rows{unit}")
    print(f"before:   {_losses(model, task)}")
    prune(model, args.sparsity, method=args.method, include_bias=args.include_bias,
          seed=options.seed, norm=NORM if args.norm is None else args.norm)
    print(f"pruned:   {_losses(model, task)}")
    if args.finetune_epochs:
        # the saved weight decay and regularizers carry over unless the options replace them
        set_l2(model, args.l2)
        model.compile(optimizer=finetune_optimizer(
            model.optimizer, LEARNING_RATE if args.lr is None else args.lr, args.weight_decay,
            args.decoupled), metrics=metrics)
        with divergence_reported():
            model.fit(task["X_train"], task["y_train"], epochs=args.finetune_epochs,
                      batch_size=BATCH_SIZE if args.batch_size is None else args.batch_size,
                      seed=options.seed, verbose=0)
        print(f"finetuned ({args.finetune_epochs} epochs): {_losses(model, task)}")
    sp = model.sparsity()
    print(f"{'layer':<7}{'W shape':<14}{'sparsity':>10}")
    for i, (layer, s) in enumerate(zip(model.layers, sp["layers"])):
        print(f"{i:<7}{str(layer.W.shape):<14}{s:>10.4f}")
    print(f"total sparsity {sp['total']:.4f} (with biases {sp['total_with_bias']:.4f})")
    sizes = {fmt: model_nbytes(model, fmt, bits=bits) for fmt in FORMATS}
    print(f"bytes at {bits} bits/value: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    if args.shrink:
        model = shrink(model)
        print("shrunk to W shapes " + " ".join(str(layer.W.shape) for layer in model.layers)
              + f": {model_nbytes(model, 'dense', bits=bits)} bytes dense")
    if args.out:
        save(model, args.out)
        print(f"saved {args.out}")
    return 0
