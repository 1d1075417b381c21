"""``minscale prune``: prune a saved model, optionally fine-tune it, report loss, sparsity and size.

Example::

    minscale prune model.npz --sparsity 0.9 --method global --finetune-epochs 20 \\
        --data diabetes --out pruned.npz
"""
from __future__ import annotations

from ._common import add_data_arguments, load_task

NAME = "prune"
HELP = "prune a saved model (magnitude, global, random or structured) and report the cost"


def add_arguments(parser):
    """Register the prune command's options on `parser`."""
    from ..prune import METHODS

    parser.add_argument("model", help="saved model (.npz, as written by minscale train --save)")
    parser.add_argument("--sparsity", type=float, required=True,
                        help="fraction of zeros in [0, 1] (of neurons for structured)")
    parser.add_argument("--method", default="magnitude", choices=METHODS)
    parser.add_argument("--include-bias", action="store_true", help="prune the biases too")
    parser.add_argument("--norm", type=float, default=2.0,
                        help="L_p norm of a neuron for --method structured (default: 2)")
    parser.add_argument("--shrink", action="store_true",
                        help="structured: remove the pruned neurons from the saved model")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="epochs of Adam on the training split after pruning (default: 0)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    parser.add_argument("--bits", type=int, default=None,
                        help="bits per stored value in the size report (default: the model's "
                             "dtype, 64 or 32)")
    add_data_arguments(parser)
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="where to save the pruned model (.npz); not saved without it")


def _losses(model, task):
    train = model.evaluate(task["X_train"], task["y_train"], return_dict=True)
    test = model.evaluate(task["X_test"], task["y_test"], return_dict=True)
    text = f"train loss {train['loss']:.6g}, test loss {test['loss']:.6g}"
    if "accuracy" in test:
        text += f", test accuracy {test['accuracy']:.4f}"
    return text


def run(args):
    """Load, prune (and fine-tune), print the report, save; return the exit code."""
    from ..optim import Adam
    from ..prune import FORMATS, METHODS, _check_sparsity, model_nbytes, prune, shrink

    # argument mistakes are reported before any file is read
    _check_sparsity(args.sparsity, "--sparsity")
    if args.method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {args.method!r}")
    if args.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if args.shrink and args.method != "structured":
        raise ValueError(f"--shrink needs --method structured, got --method {args.method}")
    if args.bits is not None and not 1 <= args.bits <= 64:
        raise ValueError(f"--bits must be in [1, 64], got {args.bits}")
    from ..io import load, save

    model = load(args.model)
    task = load_task(args, model.dtype.name)
    metrics = ["accuracy"] if task["info"]["task"] == "classification" else None
    if metrics and "accuracy" not in model.metrics:
        model.metrics = list(metrics)
    bits = args.bits if args.bits is not None else model.dtype.itemsize * 8
    unit = "" if task["y_scale"] == 1.0 else " (standardized target)"
    print(f"model {args.model}: {model.count_params()} parameters, data {task['info']['name']}: "
          f"{task['X_train'].shape[0]} train / {task['X_test'].shape[0]} test rows{unit}")
    print(f"before:   {_losses(model, task)}")
    prune(model, args.sparsity, method=args.method, include_bias=args.include_bias,
          seed=args.seed, norm=args.norm)
    print(f"pruned:   {_losses(model, task)}")
    if args.finetune_epochs:
        model.compile(optimizer=Adam(args.lr), metrics=metrics)
        model.fit(task["X_train"], task["y_train"], epochs=args.finetune_epochs,
                  batch_size=args.batch_size, seed=args.seed, verbose=0)
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
