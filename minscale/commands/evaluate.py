"""``minscale evaluate``: loss (and accuracy) of a saved model on a data set's held-out split."""
from __future__ import annotations

import argparse
import os
import sys

from ..data import accuracy
from ..datasets import NAMES
from ..io import load
from ..losses import mse
from ._common import (
    add_recorded_data_arguments,
    check_at_least,
    check_input_path,
    integer,
    load_task,
)

NAME = "evaluate"
HELP = "evaluate a saved model on the held-out split of a data set"

#: defaults of the data options when neither the command line nor the model file gives them
#: (the same as ``minscale train``'s)
DATA_DEFAULTS = {"data": "diabetes", "target": None, "test_size": 0.2, "seed": 0}


def add_arguments(parser):
    """Register the evaluate command's options on `parser`."""
    parser.add_argument("path", help="a model file written by minscale (.npz)")
    add_recorded_data_arguments(parser)
    parser.add_argument("--batch-size", type=integer, default=None,
                        help="rows per forward pass (default: all at once)")
    parser.add_argument("--integer", action="store_true",
                        help="quantized models: run the integer-only inference path")


def data_options(args, recorded, model_path=None):
    """Resolve the data options: command line, else what the model file records, else defaults.

    Parameters
    ----------
    args : argparse.Namespace
        With ``data``, ``target``, ``test_size``, ``seed`` (None = not given).
    recorded : dict or None
        ``model.state["data"]`` as ``minscale train`` stores it: the same four keys.
    model_path : str, optional
        The model file; when given, a data file taken from the record is checked to exist,
        and the message says that the path came from this model file.

    Returns
    -------
    options : argparse.Namespace
        The four values, ready for :func:`minscale.commands._common.load_task`.
    differs : list of str
        Options given on the command line that differ from the recorded ones (the
        standardization then differs from training's).

    Raises
    ------
    FileNotFoundError
        With `model_path`: ``--data`` not given and the recorded data file is gone.
    """
    recorded = recorded if isinstance(recorded, dict) else {}
    values, differs = {}, []
    for key, default in DATA_DEFAULTS.items():
        given = getattr(args, key)
        if given is not None:
            values[key] = given
            if key in recorded and recorded[key] != given:
                differs.append(f"--{key.replace('_', '-')} {given!r} (trained with "
                               f"{recorded[key]!r})")
        else:
            values[key] = recorded.get(key, default)
    data = values["data"]
    if (model_path is not None and args.data is None and "data" in recorded
            and isinstance(data, str) and data not in NAMES
            and not os.path.exists(data)):
        raise FileNotFoundError(f"the data file {data!r} recorded in the model file "
                                f"{model_path!r} does not exist (moved or renamed?); give its "
                                "path with --data")
    return argparse.Namespace(**values), differs


def evaluate_model(model, X, y, classification, batch_size=None, integer=False):
    """Mean squared error (and accuracy) of any minscale model on (X, y).

    Parameters
    ----------
    model : Sequential, prune.SparseModel or quant.QuantizedModel
        Anything with ``predict(X, batch_size=None)``.
    X : ndarray, shape (n, d_in)
    y : ndarray, shape (n, d_out)
    classification : bool
        Also report argmax accuracy against the one-hot `y`.
    batch_size : int, optional
    integer : bool, default False
        Integer-only inference (``QuantizedModel.predict(..., integer=True)``).

    Returns
    -------
    dict
        ``{"loss": float}`` (mse, mean over rows and outputs, in y's squared unit) and
        ``"accuracy"`` for classification.

    Raises
    ------
    ValueError
        The model's input or output width differs from the data's; `integer` for a model
        that is not quantized.
    """
    if integer:
        if type(model).__name__ != "QuantizedModel":
            raise ValueError(f"--integer needs a quantized model, the file holds a "
                             f"{type(model).__name__}")
        y_hat = model.predict(X, integer=True, batch_size=batch_size)
    else:
        y_hat = model.predict(X, batch_size=batch_size)
    if y_hat.shape != y.shape:
        raise ValueError(f"the model gives {y_hat.shape[1]} outputs per row but the data has "
                         f"{y.shape[1]} targets: not the data set the model was trained on?")
    result = {"loss": mse(y.astype(y_hat.dtype), y_hat, "mean")}
    if classification:
        result["accuracy"] = float(accuracy(y, y_hat))
    return result


def run(args):
    """Load the model, rebuild the held-out split and print loss (and accuracy)."""
    if args.batch_size is not None:
        check_at_least(args.batch_size, "--batch-size", 1)
    model = load(check_input_path(args.path, "path"))
    state = getattr(model, "state", None)
    recorded = state.get("data") if isinstance(state, dict) else None
    options, differs = data_options(args, recorded, args.path)
    if recorded is None:
        print("minscale: note: the model file records no training data settings; features "
              "are standardized with the training split of --data/--seed/--test-size, which "
              "must match the training run", file=sys.stderr)
    for text in differs:
        print(f"minscale: note: {text}; the split and standardization differ from training",
              file=sys.stderr)
    dtype = getattr(model, "dtype", None)
    task = load_task(options, dtype="float64" if dtype is None else str(dtype))
    X, y = task["X_test"], task["y_test"]
    input_dim = getattr(model, "input_dim", None)
    if input_dim is not None and X.shape[1] != input_dim:
        raise ValueError(f"the model expects {input_dim} features but {options.data!r} has "
                         f"{X.shape[1]}")
    classification = task["info"]["task"] == "classification"
    result = evaluate_model(model, X, y, classification, args.batch_size, args.integer)
    path = "integer-only" if args.integer else "float"
    print(f"model {args.path} ({type(model).__name__}, {path} inference) on "
          f"{task['info']['name']}: {X.shape[0]} held-out rows (test_size {options.test_size}, "
          f"seed {options.seed})")
    if task["y_scale"] not in (1.0, None):
        print(f"loss {result['loss']:.6g} (mse of the standardized target; "
              f"{result['loss'] * task['y_scale'] ** 2:.6g} in the target's squared unit)")
    else:
        print(f"loss {result['loss']:.6g} (mse)")
    if "accuracy" in result:
        print(f"accuracy {result['accuracy']:.4f}")
    return 0
