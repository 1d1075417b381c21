"""Checkpoint files: a Sequential model file plus where its training run stands.

A checkpoint is a model file (:mod:`minscale.io`) whose manifest's ``checkpoint`` section
holds the run's position (epoch, next batch, optimizer step, the epoch's loss so far), its
arguments (seed, batch size, shuffle, rows, the SHA-256 of the data), the shuffling
generator's state and the history; the arrays ``checkpoint/order`` (the epoch's shuffled
order) and ``history/<i>`` hold the rest. This module registers the ``checkpoint``
extension of :mod:`minscale.io.codecs`, so :func:`minscale.io.load` of a checkpoint sets
``model.history``; :mod:`minscale.io` re-exports the four public names.

References
----------
``torch.save`` / ``keras.callbacks.BackupAndRestore`` practice: parameters, optimizer state,
step, RNG state and history.
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from .. import optim
from ..io import codecs
from ..io.container import (
    ModelFileError,
    canonical_json,
    check_finite_parameters,
    data_digest,
    header,
    manifest_field,
    name_the_file,
    read_container,
    write_container,
)
from ..model import Sequential
from .history import History

__all__ = ["TrainingProgress", "write_checkpoint", "read_checkpoint", "restore_checkpoint"]

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


@dataclasses.dataclass
class TrainingProgress:
    """Where a training run stands, so that it can continue exactly.

    Attributes
    ----------
    epoch : int
        0-based epoch to continue in (== epochs when training finished).
    batch : int
        Index of the next batch of that epoch (0: the epoch has not begun; its order is
        drawn from the generator).
    loss_total : float
        The epoch's loss sum so far (see :func:`minscale.train.run`).
    order : ndarray of int64, shape (n,), or None
        The epoch's shuffled order when ``batch > 0`` and shuffling.
    rng_state : dict
        ``bit_generator.state`` of the shuffling generator after the epoch's order was drawn.
    history : train.History
    seed : int or None
        The ``seed`` argument of the run.
    batch_size : int
    shuffle : bool
    n_samples : int
    data_sha256 : str
        :func:`minscale.io.data_digest` of the training data.
    """

    epoch: int
    batch: int
    loss_total: float
    order: np.ndarray | None
    rng_state: dict
    history: object
    seed: int | None
    batch_size: int
    shuffle: bool
    n_samples: int
    data_sha256: str



def write_checkpoint(path, model, progress):
    """Save `model` and the run's `progress` atomically (one file, see :func:`minscale.io.save`).

    Parameters
    ----------
    path : str or os.PathLike
    model : Sequential
    progress : TrainingProgress

    Returns
    -------
    dict
        The manifest written.

    Raises
    ------
    As :func:`minscale.io.save`.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a minscale Sequential, got {type(model).__name__}")
    fields, arrays = model.to_payload()
    manifest = header("Sequential")
    manifest.update(fields)
    history = progress.history
    keys = list(history.history)
    for i, key in enumerate(keys):
        arrays[f"history/{i}"] = np.asarray(history.history[key], dtype=np.float64)
    if progress.order is not None:
        arrays["checkpoint/order"] = np.ascontiguousarray(progress.order, dtype=np.int64)
    manifest["checkpoint"] = {
        "epoch": int(progress.epoch), "batch": int(progress.batch),
        "step": int(model.optimizer.iterations) if model.optimizer is not None else 0,
        "loss_total": float(progress.loss_total), "rng_state": progress.rng_state,
        "seed": None if progress.seed is None else int(progress.seed),
        "batch_size": int(progress.batch_size), "shuffle": bool(progress.shuffle),
        "n_samples": int(progress.n_samples), "data_sha256": progress.data_sha256,
        "history_keys": keys, "history_epoch": [int(e) for e in history.epoch],
    }
    return write_container(path, manifest, arrays)



def _check_rng_state(state, path):
    if not isinstance(state, dict) or state.get("bit_generator") not in _BIT_GENERATORS:
        raise ModelFileError(f"{path!r}: checkpoint rng_state must name one of "
                             f"{_BIT_GENERATORS}, got {state!r:.80}")
    try:
        getattr(np.random, state["bit_generator"])().state = state
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise ModelFileError(f"{path!r}: bad checkpoint rng_state: {exc}") from None
    return state



def _decode_progress(manifest, arrays, path):
    ck = manifest_field(manifest, "checkpoint", dict, "manifest")
    where = "manifest['checkpoint']"
    epoch = manifest_field(ck, "epoch", int, where)
    batch = manifest_field(ck, "batch", int, where)
    batch_size = manifest_field(ck, "batch_size", int, where)
    n_samples = manifest_field(ck, "n_samples", int, where)
    loss_total = manifest_field(ck, "loss_total", (int, float), where)
    shuffle = manifest_field(ck, "shuffle", bool, where)
    data_sha = manifest_field(ck, "data_sha256", str, where)
    keys = manifest_field(ck, "history_keys", list, where)
    epochs_done = manifest_field(ck, "history_epoch", list, where)
    seed = ck.get("seed")
    if epoch < 0 or batch < 0 or batch_size < 1 or n_samples < 1 \
            or batch > math.ceil(n_samples / batch_size):
        raise ModelFileError(f"{path!r}: inconsistent checkpoint position epoch {epoch}, batch "
                             f"{batch}, batch_size {batch_size}, n_samples {n_samples}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ModelFileError(f"{path!r}: checkpoint seed must be an int or null, got {seed!r}")
    if not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys) \
            or not all(isinstance(e, int) and not isinstance(e, bool) for e in epochs_done):
        raise ModelFileError(f"{path!r}: bad checkpoint history fields")
    rng_state = _check_rng_state(ck.get("rng_state"), path)
    history = History()
    history.history = {}
    for i, key in enumerate(keys):
        arr = arrays.get(f"history/{i}")
        if arr is None or arr.ndim != 1 or arr.dtype != np.float64:
            raise ModelFileError(f"{path!r}: history entry {key!r} is missing or not a float64 "
                                 "vector")
        history.history[key] = arr.tolist()
    history.epoch = list(epochs_done)
    order = arrays.get("checkpoint/order")
    if order is not None:
        if order.shape != (n_samples,) or order.dtype != np.int64 \
                or not np.array_equal(np.sort(order), np.arange(n_samples)):
            raise ModelFileError(f"{path!r}: checkpoint order is not a permutation of "
                                 f"{n_samples} rows")
    elif shuffle and batch > 0:
        raise ModelFileError(f"{path!r}: a mid-epoch checkpoint of a shuffled run needs its "
                             "order")
    return TrainingProgress(epoch=epoch, batch=batch, loss_total=float(loss_total), order=order,
                            rng_state=rng_state, history=history, seed=seed,
                            batch_size=batch_size, shuffle=shuffle, n_samples=n_samples,
                            data_sha256=data_sha)



def read_checkpoint(path):
    """Read a checkpoint written by :func:`write_checkpoint`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    model : Sequential
        As :func:`minscale.io.load` returns it.
    progress : TrainingProgress
    optimizer_state : dict or None
        ``{"class", "config", "iterations", "arrays"}`` as stored (kept apart because an
        optimizer with a custom schedule cannot be rebuilt from its config).

    Raises
    ------
    ModelFileError
        Everything :func:`minscale.io.load` raises it for, and a file without a checkpoint section.
    FileNotFoundError, IsADirectoryError, PermissionError
    """
    path = os.fspath(path) if isinstance(path, os.PathLike) else path
    manifest, arrays = read_container(path)
    if manifest.get("checkpoint") is None:
        raise ModelFileError(f"{path!r} is a model file without a checkpoint section: nothing "
                             "to resume (save it from fit(..., checkpoint=...))")
    check_finite_parameters(arrays, path)
    try:
        if manifest.get("kind") != "Sequential":
            raise ModelFileError(f"{path!r}: checkpoints hold Sequential models, got "
                                 f"{manifest.get('kind')!r}")
        model, opt_state = Sequential.from_payload(manifest, arrays, path,
                                                   optimizer_state=True)
        progress = _decode_progress(manifest, arrays, path)
    except ModelFileError as exc:
        raise name_the_file(exc, path) from exc.__cause__
    except Exception as exc:
        raise ModelFileError(f"{path!r}: the manifest does not describe a valid checkpoint: "
                             f"{type(exc).__name__}: {exc}") from exc
    model.history = progress.history
    return model, progress, opt_state



def _architecture(config):
    return {k: v for k, v in config.items() if k != "seed"}



def restore_checkpoint(model, path, X, y, batch_size, shuffle, seed, epochs=None):
    """Load a checkpoint into `model` for :func:`minscale.train.run` to continue from.

    Parameters
    ----------
    model : Sequential
        Built and compiled like the checkpointed one: same architecture and dtype, same
        reduction and metrics, an optimizer of the same config (compared when both configs
        are serializable, else by class).
    path : str or os.PathLike
    X, y : ndarray
        The training data, validated; must be the checkpointed run's (SHA-256 compared).
    batch_size : int
    shuffle : bool
    seed : int or None
        Must equal the checkpointed run's arguments: otherwise the continued run could not
        equal an uninterrupted one.
    epochs : int, optional
        The total number of epochs the continued run reaches; must not lie before the
        checkpoint's position.

    Returns
    -------
    TrainingProgress

    Raises
    ------
    ModelFileError
        A damaged or foreign file (see :func:`minscale.io.load`).
    ValueError
        The model, data or arguments differ from the checkpointed run, naming what differs;
        `model` is then left untouched.
    """
    ck_model, progress, opt_state = read_checkpoint(path)
    if _architecture(ck_model.get_config()) != _architecture(model.get_config()):
        raise ValueError(f"resume={os.fspath(path)!r} holds the architecture "
                         f"{_architecture(ck_model.get_config())}, the model is "
                         f"{_architecture(model.get_config())}")
    if (ck_model.reduction, list(ck_model.metrics)) != (model.reduction, list(model.metrics)):
        raise ValueError(f"resume: the checkpoint was compiled with reduction "
                         f"{ck_model.reduction!r} and metrics {ck_model.metrics}, the model "
                         f"with {model.reduction!r} and {model.metrics}")
    for name, ours, theirs in (("batch_size", batch_size, progress.batch_size),
                               ("shuffle", bool(shuffle), progress.shuffle),
                               ("seed", seed, progress.seed),
                               ("the number of training rows", X.shape[0], progress.n_samples)):
        if ours != theirs:
            raise ValueError(f"resume: {name} is {ours!r} but the checkpointed run used "
                             f"{theirs!r}; an exact continuation needs the same value")
    if epochs is not None and (progress.epoch > epochs
                               or (progress.epoch == epochs and progress.batch > 0)):
        raise ValueError(f"resume: epochs is {epochs} but the checkpoint {os.fspath(path)!r} "
                         f"is already in epoch {progress.epoch}; epochs counts the total to "
                         "reach")
    if data_digest(X, y) != progress.data_sha256:
        raise ValueError("resume: the training data (X, y) differ from the checkpointed run's "
                         "(SHA-256 mismatch)")
    if opt_state is None:
        raise ValueError("resume: the checkpoint holds no optimizer state")
    try:
        ours = optim.serialize(model.optimizer)
    except (TypeError, AttributeError):
        ours = None
    if opt_state["config"] is not None and ours is not None:
        if canonical_json(ours) != canonical_json(opt_state["config"]):
            raise ValueError(f"resume: the model's optimizer {ours} differs from the "
                             f"checkpoint's {opt_state['config']}")
    elif type(model.optimizer).__name__ != opt_state["class"]:
        raise ValueError(f"resume: the model's optimizer is a {type(model.optimizer).__name__}, "
                         f"the checkpoint's a {opt_state['class']}")
    ck_qat, our_qat = ck_model.state.get("quantization"), model.state.get("quantization")
    if ck_qat != our_qat:
        raise ValueError(f"resume: the checkpoint was trained with quantization {ck_qat}, this "
                         f"run has {our_qat}; pass the same quantization to fit")
    np.copyto(model.params, ck_model.params)
    np.copyto(model.mask, ck_model.mask)
    model.state = ck_model.state
    for ours, theirs in zip(model.layers, ck_model.layers):
        src = getattr(theirs.output_quantizer, "observer", None)
        dst = getattr(ours.output_quantizer, "observer", None)
        if src is not None and dst is not None:
            dst.min_val, dst.max_val = src.min_val, src.max_val
    model.set_optimizer_state(opt_state)
    return progress



def _encode_extension(model, manifest, arrays):
    # save() writes "checkpoint": null; the section is written by write_checkpoint only
    return None


def _decode_extension(model, manifest, arrays, path):
    model.history = _decode_progress(manifest, arrays, path).history


codecs.register_extension("checkpoint", _encode_extension, _decode_extension)
