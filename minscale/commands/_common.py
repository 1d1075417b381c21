"""Argument helpers shared by the sub-commands."""
from __future__ import annotations

import argparse
import math
import os

import numpy as np

from .. import data
from ..data import COUNT_MAX, SEED_MAX, integer_text, one_hot, standardize, train_test_split
from ..datasets import load
from ..optim import Adam, AdamW
from ..regularizers import L2, check_strength


def _short(text):
    return repr(text) if len(text) <= 40 else f"{text[:30]!r}... ({len(text)} characters)"


def hidden_sizes(text):
    """Parse ``"32,32"`` into ``[32, 32]`` (empty string: no hidden layer).

    Each size lies in [1, :data:`minscale.data.COUNT_MAX`]; whether the model fits in memory
    is checked when it is built (:meth:`minscale.model.Sequential.build`).
    """
    if text.strip() == "":
        return []
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hidden must be comma-separated integers, got {_short(text)}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be >= 1, got {_short(text)}")
    big = [s for s in sizes if s > COUNT_MAX]
    if big:
        raise argparse.ArgumentTypeError(f"--hidden sizes must be at most 2**31 - 1 = "
                                         f"{COUNT_MAX}, got {integer_text(big[0])}")
    return sizes


def integer(text):
    """argparse type of an integer option: an int of at most :data:`minscale.data.COUNT_MAX`
    in magnitude.

    Each command checks its own lower bound (>= 0, >= 1, ...); this bound keeps absurd values
    (``--batch-size`` with 31 digits) away from NumPy and the compiled kernels, which take
    int64. argparse prefixes the message with ``argument --NAME:``.
    """
    value = _parse_int(text)
    if abs(value) > COUNT_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer of magnitude at most 2**31 - 1 = "
                                         f"{COUNT_MAX}, got {integer_text(value)}")
    return value


def seed(text):
    """argparse type of ``--seed``: an int in [0, :data:`minscale.data.SEED_MAX`]."""
    value = _parse_int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63 - 1], got "
                                         f"{integer_text(value)}")
    return value


def _parse_int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {_short(text)}") from None


def add_data_arguments(parser, default="diabetes"):
    """--data, --target, --test-size, --seed."""
    parser.add_argument("--data", default=default,
                        help="diabetes | digits | mnist5k | PATH.csv | PATH.npz "
                             "(default: %(default)s)")
    parser.add_argument("--target", default=None, help="target column of a CSV (default: last)")
    parser.add_argument("--test-size", type=float, default=0.2,
                        help="held-out fraction (default: %(default)s)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of split, init and shuffling")


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
                        help="diabetes | digits | mnist5k | PATH.csv | PATH.npz (default: the "
                             "data the model file records, else diabetes)")
    parser.add_argument("--target", default=None, help="target column of a CSV")
    parser.add_argument("--test-size", type=float, default=None,
                        help="held-out fraction (default: as recorded, else 0.2)")
    parser.add_argument("--seed", type=seed, default=None,
                        help=f"seed of {seed_use} (default: as recorded, else 0)")


def check_output_path(path, argument, suffixes=None):
    """Check, before any work, that a file can be written at `path`.

    The check itself is :func:`minscale.data.check_output_path` (the Python API checks
    checkpoint paths with it too); `argument` is the option, e.g. ``"--out"``, that every
    message starts with.
    """
    return data.check_output_path(path, argument, suffixes)


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
    return np.errstate(over="ignore", invalid="ignore")


def load_task(args, dtype="float64", validation_size=None):
    """Load, split and standardize the data named by ``args``.

    Features are standardized with the training part's mean and deviation, except those of
    a data set whose ``info`` gives a ``feature_range`` (images: ``mnist5k``), which are
    mapped from that range to [0, 1]; a regression
    target is standardized the same way (losses are then in units of the target's variance:
    multiply by ``y_scale**2`` for the original unit).

    Parameters
    ----------
    args : argparse.Namespace
        ``data``, ``target``, ``test_size``, ``seed``.
    dtype : str, default "float64"
    validation_size : float in (0, 1), optional
        Carve this fraction of the training split off as a validation split, by a second
        seeded permutation with ``args.seed`` (:func:`minscale.data.train_test_split`),
        before the standardization, whose statistics then come from the remaining training
        rows only. The study selects on it and reports on the test split.

    Returns
    -------
    dict
        X_train, X_test, y_train, y_test (targets 2-D; one-hot for classification), info,
        labels_test (class labels or None), y_scale (float; None for a multi-output
        target, whose standardized losses have no single factor; 1.0 for classification);
        with `validation_size` also X_val, y_val and labels_val.

    Raises
    ------
    ValueError
        As :func:`minscale.datasets.load`, and when a statistic of the standardization
        overflows (values too large; the message names ``--data`` and the features or the
        target).
    """
    X, y, info = load(args.data, target=args.target)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=args.test_size, seed=args.seed)
    X_va = y_va = None
    if validation_size is not None:
        X_tr, X_va, y_tr, y_va = train_test_split(X_tr, y_tr, test_size=validation_size,
                                                  seed=args.seed)
    source = f"--data {str(args.data)!r}"
    if info.get("feature_range") is not None:
        # images: one known range for every pixel; a per-pixel deviation would blow a pixel
        # that is ink in a handful of training images up to ~180 deviations on test images
        low, high = info["feature_range"]
        X_tr, X_te = (X_tr - low) / (high - low), (X_te - low) / (high - low)
        if X_va is not None:
            X_va = (X_va - low) / (high - low)
    else:
        X_tr, X_te, std = standardize(X_tr, X_te,
                                      names=(f"{source} features (training split)",
                                             f"{source} features (test split)"))
        if X_va is not None:
            X_va = std.transform(X_va)
    labels, labels_va, y_scale = None, None, 1.0
    if info["task"] == "classification":
        k = info["n_classes"]
        labels, labels_va = y_te, y_va
        y_tr, y_te = one_hot(y_tr, k, dtype), one_hot(y_te, k, dtype)
        if y_va is not None:
            y_va = one_hot(y_va, k, dtype)
    else:
        y_tr, y_te, y_std = standardize(y_tr.reshape(len(y_tr), -1),
                                        y_te.reshape(len(y_te), -1),
                                        names=(f"{source} target (training split)",
                                               f"{source} target (test split)"))
        if y_va is not None:
            y_va = y_std.transform(y_va.reshape(len(y_va), -1))
        # a loss converts back to the target's unit by one factor only for a single output
        y_scale = float(y_std.scale_[0]) if y_std.scale_.size == 1 else None
    out = {"info": info, "labels_test": labels, "y_scale": y_scale}
    splits = [("X_train", X_tr), ("X_test", X_te), ("y_train", y_tr), ("y_test", y_te)]
    if X_va is not None:
        out["labels_val"] = labels_va
        splits += [("X_val", X_va), ("y_val", y_va)]
    with np.errstate(over="ignore"):  # a float32 overflow is reported just below
        for key, arr in splits:
            out[key] = arr.astype(dtype)
            if not np.isfinite(out[key]).all():
                raise ValueError(f"{source}: the standardized {key} has values beyond the "
                                 f"range of {dtype}; rescale the data")
    return out


def add_regularization_arguments(parser, when=""):
    """Register ``--l2``, ``--weight-decay`` and ``--decoupled`` on `parser`.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    when : str
        What the options apply to, for the help text (``" (fine-tuning)"``).
    """
    parser.add_argument("--l2", type=float, default=None, metavar="X",
                        help="Keras L2 on every kernel: the training loss gains X * sum(W**2) "
                             f"(biases excluded; the reported test loss does not){when}")
    parser.add_argument("--weight-decay", type=float, default=None, metavar="X",
                        help="weight decay of the optimizer: coupled as torch (gradient + X * "
                             f"theta, biases included); see --decoupled{when}")
    parser.add_argument("--decoupled", action="store_true",
                        help="decoupled weight decay: AdamW (needs --weight-decay and "
                             f"--optimizer adam){when}")


def finetune_optimizer(saved, learning_rate, weight_decay=None, decoupled=False):
    """The Adam of ``prune --finetune-epochs`` and ``quantize --qat-epochs``.

    Parameters
    ----------
    saved : optimizer or None
        The loaded model's optimizer: unless `weight_decay` is given, its ``weight_decay`` and
        ``decay_bias`` carry over, and an :class:`minscale.optim.AdamW` stays decoupled.
    learning_rate : float
    weight_decay : float, optional
        ``--weight-decay``: replaces the saved decay.
    decoupled : bool
        ``--decoupled``: AdamW with `weight_decay`.

    Returns
    -------
    Adam or AdamW
    """
    if weight_decay is not None:
        return (AdamW if decoupled else Adam)(learning_rate, weight_decay=weight_decay)
    weight_decay = float(getattr(saved, "weight_decay", 0.0))
    decay_bias = bool(getattr(saved, "decay_bias", True))
    cls = AdamW if isinstance(saved, AdamW) else Adam
    return cls(learning_rate, weight_decay=weight_decay, decay_bias=decay_bias)


def set_l2(model, l2):
    """``--l2 X`` on a loaded model: every kernel gets ``L2(X)`` (X = 0 removes them).

    Parameters
    ----------
    model : Sequential
    l2 : float or None
        None keeps the saved regularizers.
    """
    if l2 is not None:
        for layer in model.layers:
            layer.kernel_regularizer = L2(l2) if l2 > 0 else None


def check_regularization_options(args):
    """Check ``--l2``, ``--weight-decay`` and ``--decoupled`` (train, prune, quantize).

    Raises
    ------
    ValueError
        A strength that is negative, NaN or infinite (naming the option); ``--decoupled``
        without ``--weight-decay``, or with an optimizer other than adam (AdamW is Adam with
        decoupled decay).
    """
    if args.l2 is not None:
        check_strength("--l2", args.l2)
    if args.weight_decay is not None:
        check_strength("--weight-decay", args.weight_decay)
    if args.decoupled:
        if args.weight_decay is None:
            raise ValueError("--decoupled needs --weight-decay X (the decoupled decay's "
                             "strength)")
        if getattr(args, "optimizer", "adam") != "adam":
            raise ValueError(f"--decoupled trains with AdamW: give --optimizer adam, got "
                             f"--optimizer {args.optimizer}")
