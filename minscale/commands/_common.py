"""Argument helpers shared by the sub-commands."""
from __future__ import annotations

import argparse
import math
import os


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


def add_recorded_data_arguments(parser, seed_use="the split"):
    """--data, --target, --test-size, --seed for commands that read a saved model.

    Every default is None: :func:`minscale.commands.evaluate.data_options` then takes the
    values the model file recorded at training time, else diabetes, 0.2 and 0.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    seed_use : str
        What the seed drives besides the split, for the help text.
    """
    parser.add_argument("--data", default=None,
                        help="diabetes | digits | PATH.csv | PATH.npz (default: the data the "
                             "model file records, else diabetes)")
    parser.add_argument("--target", default=None, help="target column of a CSV")
    parser.add_argument("--test-size", type=float, default=None,
                        help="held-out fraction (default: as recorded, else 0.2)")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"seed of {seed_use} (default: as recorded, else 0)")


def check_output_path(path, argument, suffixes=None):
    """Check, before any work, that a file can be written at `path`.

    Parameters
    ----------
    path : str
        The file the command will write (atomically: a temporary file in the same folder,
        then a rename, so only the folder needs to be writable).
    argument : str
        The option that named it, e.g. ``"--out"``; every message starts with it.
    suffixes : sequence of str, optional
        Accepted extensions, lower case with the dot (``(".png", ".pdf")``); compared case
        insensitively. None accepts any name.

    Returns
    -------
    str
        `path`, unchanged.

    Raises
    ------
    ValueError
        `path` is empty, its extension is not one of `suffixes`, its folder does not exist or
        is not a folder, `path` is a folder or an existing non-regular file (device, FIFO,
        symbolic link), or the folder is not writable (``os.access``;
        root passes this check whatever the permission bits, so the final write can still
        fail: :func:`minscale.cli.main` reports that OSError as one line too).
    """
    if not isinstance(path, str) or path == "":
        raise ValueError(f"{argument} must be a file name, got {path!r}")
    if suffixes is not None:
        ext = os.path.splitext(path)[1].lower()
        if ext not in suffixes:
            got = f"extension {ext!r}" if ext else "no extension"
            raise ValueError(f"{argument} {path!r}: expected a name ending in "
                             f"{', '.join(suffixes)}, got {got}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise ValueError(f"{argument} {path!r}: directory {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise ValueError(f"{argument} {path!r}: {folder!r} is not a directory")
    if os.path.isdir(path):
        raise ValueError(f"{argument} {path!r} is a directory, expected a file name")
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
        raise ValueError(f"{argument} {path!r} exists and is not a regular file (a device, "
                         "pipe or symbolic link); give a plain file name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{argument} {path!r}: directory {folder!r} is not writable")
    return path


def check_input_path(path, argument):
    """Check that `path` names an existing regular file; say which argument named it.

    Parameters
    ----------
    path : str
    argument : str
        How the command line names it: ``"model"`` / ``"path"`` for a positional argument.

    Returns
    -------
    str
        `path`, unchanged.

    Raises
    ------
    FileNotFoundError
        Nothing at `path` (the message names `argument` and `path`, no errno prefix).
    ValueError
        `path` is a directory or another non-regular file.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{argument} {path!r}: no such file")
    if not os.path.isfile(path):
        raise ValueError(f"{argument} {path!r} is not a regular file (a directory?); expected "
                         "a model file written by minscale (.npz)")
    return path


def check_positive(value, argument):
    """Reject a float option that must be finite and > 0 (a learning rate, a norm, ...).

    Raises
    ------
    ValueError
        `value` is NaN, infinite or <= 0; the message names `argument` and the value.
    """
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{argument} must be a finite number > 0, got {value!r}")
    return value


def check_at_least(value, argument, low):
    """Reject an integer option below `low` (the message names `argument`)."""
    if value < low:
        raise ValueError(f"{argument} must be an integer >= {low}, got {value}")
    return value


def divergence_reported():
    """Context for ``model.fit``: no numpy overflow warnings while training.

    ``fit`` checks every step's loss and raises ``minscale.train.DivergenceError`` (one line
    on the command line) when it is not finite; the RuntimeWarnings numpy prints on the way
    there would only add lines before that message.
    """
    import numpy as np
    return np.errstate(over="ignore", invalid="ignore")


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

    Raises
    ------
    ValueError
        As :func:`minscale.datasets.load`, and when a statistic of the standardization
        overflows (values too large; the message names ``--data`` and the features or the
        target).
    """
    import numpy as np

    from ..data import one_hot, standardize, train_test_split
    from ..datasets import load
    X, y, info = load(args.data, target=args.target)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=args.test_size, seed=args.seed)
    source = f"--data {str(args.data)!r}"
    X_tr, X_te, _ = standardize(X_tr, X_te, names=(f"{source} features (training split)",
                                                   f"{source} features (test split)"))
    labels, y_scale = None, 1.0
    if info["task"] == "classification":
        k = info["n_classes"]
        labels = y_te
        y_tr, y_te = one_hot(y_tr, k, dtype), one_hot(y_te, k, dtype)
    else:
        y_tr, y_te, y_std = standardize(y_tr.reshape(len(y_tr), -1),
                                        y_te.reshape(len(y_te), -1),
                                        names=(f"{source} target (training split)",
                                               f"{source} target (test split)"))
        # a loss converts back to the target's unit by one factor only for a single output
        y_scale = float(y_std.scale_[0]) if y_std.scale_.size == 1 else None
    out = {"info": info, "labels_test": labels, "y_scale": y_scale}
    with np.errstate(over="ignore"):  # a float32 overflow is reported just below
        for key, arr in (("X_train", X_tr), ("X_test", X_te), ("y_train", y_tr),
                         ("y_test", y_te)):
            out[key] = arr.astype(dtype)
            if not np.isfinite(out[key]).all():
                raise ValueError(f"{source}: the standardized {key} has values beyond the "
                                 f"range of {dtype}; rescale the data")
    return out
