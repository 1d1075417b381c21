"""Argument helpers shared by the sub-commands."""
from __future__ import annotations

import argparse


def hidden_sizes(text):
    """Parse ``"32,32"`` into ``[32, 32]`` (empty string: no hidden layer)."""
    if text.strip() == "":
        return []
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated integers, got {text!r}")
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be >= 1, got {text!r}")
    return sizes


def add_data_arguments(parser, default="diabetes"):
    """--data, --target, --test-size, --seed."""
    parser.add_argument("--data", default=default,
                        help="diabetes | digits | PATH.csv | PATH.npz (default: %(default)s)")
    parser.add_argument("--target", default=None, help="target column of a CSV (default: last)")
    parser.add_argument("--test-size", type=float, default=0.2,
                        help="held-out fraction (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, init and shuffling")


def load_task(args, dtype="float64"):
    """Load, split and standardize the data named by ``args``.

    Features are standardized with the training part's mean and deviation; a regression
    target is standardized the same way (losses are then in units of the target's variance:
    multiply by ``y_scale**2`` for the original unit).

    Returns
    -------
    dict
        X_train, X_test, y_train, y_test (targets 2-D; one-hot for classification), info,
        labels_test (class labels or None), y_scale (float; None for a multi-output
        target, whose standardized losses have no single factor; 1.0 for classification).
    """
    from ..data import one_hot, standardize, train_test_split
    from ..datasets import load
    X, y, info = load(args.data, target=args.target)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=args.test_size, seed=args.seed)
    X_tr, X_te, _ = standardize(X_tr, X_te)
    labels, y_scale = None, 1.0
    if info["task"] == "classification":
        k = info["n_classes"]
        labels = y_te
        y_tr, y_te = one_hot(y_tr, k, dtype), one_hot(y_te, k, dtype)
    else:
        y_tr, y_te, y_std = standardize(y_tr.reshape(len(y_tr), -1), y_te.reshape(len(y_te), -1))
        # a loss converts back to the target's unit by one factor only for a single output
        y_scale = float(y_std.scale_[0]) if y_std.scale_.size == 1 else None
    return {"X_train": X_tr.astype(dtype), "X_test": X_te.astype(dtype),
            "y_train": y_tr.astype(dtype), "y_test": y_te.astype(dtype), "info": info,
            "labels_test": labels, "y_scale": y_scale}
