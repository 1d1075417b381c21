"""Pruning a Sequential: masks into its flat mask buffer, undo, search, shrink.

The functions write masks into a :class:`~minscale.model.Sequential`'s flat mask buffer
(``model.mask``), keep the values pruned weights had in ``model.state["prune_backup"]`` for
:func:`restore`, search the highest sparsity within a loss budget
(:func:`prune_to_tolerance`) and build a smaller model without the pruned neurons
(:func:`shrink`). The mask rules themselves are :mod:`minscale.prune.masks`'.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from .. import _checks, kernels, optim
from .._checks import plain
from ..layers import Dense
from ..model import Sequential
from .masks import (
    apply_mask,
    global_magnitude_masks,
    magnitude_mask,
    random_mask,
    structured_mask,
)

__all__ = [
    "METHODS",
    "prune",
    "strip",
    "restore",
    "prune_to_tolerance",
    "ToleranceResult",
    "shrink",
]

#: mask rules accepted by :func:`prune`
METHODS = ("magnitude", "global", "random", "structured")
#: key in ``model.state`` of the (P,) array of values pruned weights had before pruning
BACKUP_KEY = "prune_backup"


def check_model(model, name="model"):
    """Return `model` when it is a built :class:`~minscale.model.Sequential`.

    Used by :mod:`minscale.prune.sparse` too (a public name of this module, not in
    ``__all__``).

    Raises
    ------
    TypeError
        ``"{name} must be a minscale Sequential, got {type}"``.
    ValueError
        ``"{name} must be built …"`` (no parameters yet).
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"{name} must be a minscale Sequential, got {type(model).__name__}")
    if not model.built:
        raise ValueError(f"{name} must be built (give input_dim, or call fit or predict first); "
                         "it has no parameters yet")
    return model


def _prunable_tensors(model, include_bias):
    """[(values view, flat start, flat stop)] of every pruned tensor: each W, b if asked."""
    out = []
    for layer, (start, stop) in zip(model.layers, model.layer_slices()):
        out.append((layer.W, start, start + layer.W.size))
        if include_bias and layer.use_bias:
            out.append((layer.b, start + layer.W.size, stop))
    return out


def _set_mask(model, new):
    """Write `new` (flat bool mask) into the model, keeping the recovery backup up to date.

    Weights pruned now have their current value saved in ``model.state[BACKUP_KEY]`` and are
    set to 0, with their optimizer state (velocity, Adam moments); weights a lower sparsity
    lets back in get their saved value again.
    """
    params, mask = model.params, model.mask
    backup = model.state.get(BACKUP_KEY)
    if backup is None or backup.shape != params.shape or backup.dtype != params.dtype:
        backup = np.zeros_like(params)
    newly_pruned = mask & ~new
    back_in = ~mask & new
    backup[newly_pruned] = params[newly_pruned]
    params[back_in] = backup[back_in]
    mask[...] = new  # in place: the layers hold views of this buffer
    pruned = ~new
    np.copyto(params, 0, where=pruned)
    if model.optimizer is not None:
        for buf in model.optimizer.state_arrays().values():
            if isinstance(buf, np.ndarray) and buf.shape == params.shape:
                np.copyto(buf, 0, where=pruned)
    model.state[BACKUP_KEY] = backup


def prune(model, sparsity, method="magnitude", include_bias=False, seed=0, norm=2):
    """Prune a model in place: compute masks, write them into ``model.mask``, zero the weights.

    Parameters
    ----------
    model : Sequential, built
    sparsity : float in [0, 1], or a sequence of them, one per layer
        Fraction of zeros asked for: of each tensor (``"magnitude"``, ``"random"``), of all
        pruned tensors together (``"global"``), or of each hidden layer's neurons
        (``"structured"``). A sequence (``"magnitude"`` and ``"random"`` only) gives layer
        i's tensors sparsity ``sparsity[i]``: the per-layer rates of Han et al. 2015.
    method : {"magnitude", "global", "random", "structured"}, default "magnitude"
        ``"magnitude"``: :func:`magnitude_mask` per tensor (layer-wise).
        ``"global"``: :func:`global_magnitude_masks`, one ranking over all pruned tensors.
        ``"random"``: :func:`random_mask` per tensor, the baseline.
        ``"structured"``: :func:`structured_mask` on every layer but the last (whose outputs
        are the model's), whole output neurons (columns of W) by their L_norm.
    include_bias : bool, default False
        Also prune the biases (each bias vector as its own tensor; with ``"structured"``, the
        bias of each pruned neuron).
    seed : int >= 0 or numpy.random.Generator, default 0
        Randomness of ``"random"`` (ignored otherwise).
    norm : float >= 1 or numpy.inf, default 2
        p of the neuron norm for ``"structured"`` (ignored otherwise).

    Returns
    -------
    model : Sequential
        The same object.

    Raises
    ------
    ValueError
        If sparsity is NaN or outside [0, 1], `method` is unknown, `model` is not built,
        ``method="structured"`` on a model with a single layer (no hidden neuron to prune),
        or a sequence of sparsities whose length is not the number of layers or whose
        method is ``"global"`` or ``"structured"``.
    TypeError
        If `model` is not a Sequential or `include_bias` not a bool.

    Notes
    -----
    The current ``model.mask`` is the previous mask of every rule, so weights pruned before
    rank first: pruning again at the same sparsity returns the same mask, and a higher
    sparsity keeps every earlier zero (a lower one lets back in, with their saved values,
    the earlier zeros whose magnitude before pruning was largest; ``"random"`` draws them,
    ``"structured"`` never lets a zero back). Each newly pruned weight's value is
    saved for :func:`restore`, then the weight and its optimizer state are set to 0; during
    :func:`minscale.train.fit` the optimizer masks gradient, moments and weight at every
    update, so pruned weights stay exactly 0.

    References
    ----------
    Han et al. 2015 (magnitude pruning); TensorFlow Model Optimization
    ``prune_low_magnitude`` (masks per layer, updated from the previous ones);
    ``torch.nn.utils.prune`` (global, random and L_n-structured rules).

    Examples
    --------
    >>> import minscale as ms
    >>> model = ms.Sequential([ms.Dense(4), ms.Dense(1)], input_dim=3, seed=0)
    >>> prune(model, 0.5, method="global").sparsity()["total"]
    0.5
    """
    model = check_model(model)
    _checks.check_choice("method", method, METHODS)
    if isinstance(sparsity, (list, tuple, np.ndarray)):
        if method not in ("magnitude", "random"):
            raise ValueError(f"one sparsity per layer needs method 'magnitude' or 'random' "
                             f"(layer-wise rules), got method={method!r}")
        if len(sparsity) != len(model.layers):
            raise ValueError(f"sparsity must give one value per layer: the model has "
                             f"{len(model.layers)} layers, got {len(sparsity)} values")
        s = [_checks.check_sparsity(f"sparsity[{i}]", v) for i, v in enumerate(sparsity)]
    else:
        s = _checks.check_sparsity("sparsity", sparsity)
    include_bias = _checks.check_bool("include_bias", include_bias)
    if method == "structured":
        new = _structured_keep(model, s, norm, include_bias)
    else:
        new = _unstructured_keep(model, s, method, include_bias, seed)
    _set_mask(model, new)
    return model


def _structured_keep(model, s, norm, include_bias):
    """Flat keep-mask of ``method="structured"``: hidden neurons by norm, no zero comes back."""
    if len(model.layers) < 2:
        raise ValueError(
            "model has no prunable neurons for method='structured': it has a single Dense "
            "layer, whose outputs are the model's outputs; add a hidden layer or use an "
            "unstructured method"
        )
    new = model.mask.copy()
    slices = model.layer_slices()
    for layer, (start, stop) in zip(model.layers[:-1], slices[:-1]):
        # combined with the previous mask, so structured pruning never brings a zero back
        keep = structured_mask(layer.W, s, norm=norm, axis=-1, mask=layer.W_mask)
        new[start:start + layer.W.size] = (keep & layer.W_mask).ravel()
        if include_bias and layer.use_bias:
            neuron_kept = keep.any(axis=0)
            new[start + layer.W.size:stop] &= neuron_kept
    return new


def _unstructured_keep(model, s, method, include_bias, seed):
    """Flat keep-mask of the per-entry rules, the current mask ranking first.

    `s` is one sparsity, or (layer-wise rules) a list of one per layer.
    """
    tensors = _prunable_tensors(model, include_bias)
    if isinstance(s, list):  # each of a layer's tensors (W, then b if pruned) gets its rate
        per_tensor = [v for v, layer in zip(s, model.layers)
                      for _ in range(2 if include_bias and layer.use_bias else 1)]
    else:
        per_tensor = [s] * len(tensors)
    prev = [model.mask[lo:hi].reshape(v.shape) for v, lo, hi in tensors]
    backup = model.state.get(BACKUP_KEY)
    if backup is not None and backup.shape == model.params.shape:
        # pruned weights are 0 now; among themselves they rank by their saved values
        values = [np.where(m, v, backup[lo:hi].reshape(v.shape))
                  for (v, lo, hi), m in zip(tensors, prev)]
    else:
        values = [v for v, _, _ in tensors]
    if method == "global":
        masks = global_magnitude_masks(values, s, masks=prev)
    elif method == "magnitude":
        masks = [magnitude_mask(v, st, mask=m) for v, st, m in zip(values, per_tensor, prev)]
    else:
        rng = _checks.as_rng("seed", seed)
        masks = [random_mask(v.shape, st, rng, mask=m)
                 for (v, _, _), st, m in zip(tensors, per_tensor, prev)]
    new = model.mask.copy()
    for (_, lo, hi), m in zip(tensors, masks):
        new[lo:hi] = m.ravel()
    return new


def strip(model):
    """Make the pruning permanent: pruned weights stay 0, the masks and the backup go.

    Parameters
    ----------
    model : Sequential, built

    Returns
    -------
    model : Sequential
        The same object, ``model.mask`` all True (so later training may move the zeros;
        ``model.sparsity()`` then reports 0, :func:`sparsity_of` on the weights the zeros).

    Raises
    ------
    TypeError, ValueError
        If `model` is not a built Sequential.

    References
    ----------
    TensorFlow Model Optimization ``strip_pruning``; ``torch.nn.utils.prune.remove``.
    """
    model = check_model(model)
    np.copyto(model.params, 0, where=~model.mask)
    model.mask[...] = True
    model.state.pop(BACKUP_KEY, None)
    return model


def restore(model):
    """Undo pruning: every pruned weight gets back the value it had just before pruning.

    Parameters
    ----------
    model : Sequential, pruned by :func:`prune`

    Returns
    -------
    model : Sequential
        The same object, ``model.mask`` all True. Weights that were never pruned keep their
        current (e.g. fine-tuned) values; this is the recovery step of prune-and-recover
        schemes such as dense-sparse-dense training.

    Raises
    ------
    ValueError
        If the model holds no backup (never pruned by :func:`prune`, or :func:`strip` or
        :func:`restore` dropped it).
    TypeError
        If `model` is not a Sequential.

    References
    ----------
    Han et al. 2017, "DSD: Dense-Sparse-Dense Training for Deep Neural Networks" (recovery
    of pruned connections; DSD restarts them from 0, this restores their earlier values).
    """
    model = check_model(model)
    backup = model.state.get(BACKUP_KEY)
    if backup is None:
        raise ValueError("model has no pruning backup to restore: it was not pruned with "
                         "minscale.prune.prune, or strip()/restore() already dropped it")
    pruned = ~model.mask
    model.params[pruned] = backup[pruned]
    model.mask[...] = True
    del model.state[BACKUP_KEY]
    return model


@dataclass(frozen=True)
class ToleranceResult:
    """Outcome of :func:`prune_to_tolerance`.

    Attributes
    ----------
    sparsity : float
        The highest level accepted (0.0 if none was); the model is left pruned to it.
    base_loss : float
        Loss of the model as given.
    loss : float
        Loss of the model as left.
    trials : tuple of (float, float, bool)
        (sparsity, loss, accepted) of every level tried, in increasing sparsity.
    """

    sparsity: float
    base_loss: float
    loss: float
    trials: tuple


def _snapshot(model):
    opt = model.optimizer
    return {
        "params": model.params.copy(),
        "mask": model.mask.copy(),
        "backup": None if BACKUP_KEY not in model.state else model.state[BACKUP_KEY].copy(),
        "iterations": None if opt is None else opt.iterations,
        "buffers": {} if opt is None else {k: v.copy() for k, v in opt.state_arrays().items()},
    }


def _rewind(model, snap):
    np.copyto(model.params, snap["params"])
    np.copyto(model.mask, snap["mask"])
    if snap["backup"] is None:
        model.state.pop(BACKUP_KEY, None)
    else:
        model.state[BACKUP_KEY] = snap["backup"]
    opt = model.optimizer
    if opt is not None:
        if snap["iterations"] is not None:
            opt.iterations = snap["iterations"]
        for name, buf in opt.state_arrays().items():
            # a buffer the fine-tuning created did not exist before: zeros are a fresh start
            saved = snap["buffers"].get(name)
            if saved is None:
                buf[...] = 0
            else:
                np.copyto(buf, saved)


def prune_to_tolerance(model, X, y, max_loss_increase,
                       sparsities=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
                       method="magnitude", finetune_epochs=0, batch_size=32, seed=0,
                       include_bias=False, validation_data=None):
    """Prune to the highest sparsity whose loss stays within a budget, in place.

    Parameters
    ----------
    model : Sequential, built (compiled if `finetune_epochs` > 0; else Adam's defaults)
    X : array_like, shape (n, d_in)
    y : array_like, shape (n, d_out) or (n,)
        Data for fine-tuning, and for measuring the loss unless `validation_data` is given.
    max_loss_increase : float, >= 0
        Budget in the loss's unit (squared unit of y): a level is accepted when
        ``loss - base_loss <= max_loss_increase``. For a relative budget r pass
        ``r * model.evaluate(X, y)``.
    sparsities : sequence of float in [0, 1]
        Levels to try, visited in increasing order (duplicates dropped).
    method : str, default "magnitude"
        Rule of :func:`prune`.
    finetune_epochs : int, >= 0, default 0
        Epochs of :meth:`Sequential.fit` on (X, y) after each pruning, masks held.
    batch_size : int, default 32
    seed : int, default 0
        Seeds the fine-tuning's shuffling and the ``"random"`` rule.
    include_bias : bool, default False
    validation_data : (X_val, y_val), optional
        Where the loss is measured (e.g. a held-out split); (X, y) otherwise.

    Returns
    -------
    ToleranceResult

    Raises
    ------
    ValueError
        If `max_loss_increase` is negative or NaN, `sparsities` is empty or holds a value
        outside [0, 1], `finetune_epochs` < 0, or an argument of :func:`prune` is bad.

    Notes
    -----
    Each level starts from the last accepted state: prune (earlier zeros stay), fine-tune,
    measure. A level that breaks the budget is undone exactly -- weights, masks, recovery
    backup and optimizer state go back to what they were before it -- and the next level is
    still tried, so the result is the highest level accepted, not only the first failure.
    """
    model = check_model(model)
    max_loss_increase = _checks.check_real("max_loss_increase", plain(max_loss_increase), 0)
    try:
        levels = [_checks.check_sparsity("sparsities[i]", s) for s in sparsities]
    except TypeError:
        raise TypeError(f"sparsities must be a sequence of floats in [0, 1], got "
                        f"{plain(sparsities)!r}") from None
    if not levels:
        raise ValueError("sparsities must hold at least one level, got an empty sequence")
    levels = sorted(set(levels))
    finetune_epochs = _checks.check_int("finetune_epochs", finetune_epochs, lo=0)
    _checks.check_choice("method", method, METHODS)
    measure = (X, y) if validation_data is None else tuple(validation_data)
    base = float(model.evaluate(*measure, return_dict=True)["loss"])
    best, best_loss, trials = 0.0, base, []
    for level in levels:
        snap = _snapshot(model)
        prune(model, level, method=method, include_bias=include_bias, seed=seed)
        if finetune_epochs:
            model.fit(X, y, epochs=finetune_epochs, batch_size=batch_size, seed=seed, verbose=0)
        loss = float(model.evaluate(*measure, return_dict=True)["loss"])
        accepted = math.isfinite(loss) and loss - base <= max_loss_increase
        trials.append((level, loss, accepted))
        if accepted:
            best, best_loss = level, loss
        else:
            _rewind(model, snap)
    return ToleranceResult(sparsity=best, base_loss=base, loss=best_loss, trials=tuple(trials))


def _copy_compile_settings(src, dst):
    dst.reduction, dst.metrics = src.reduction, list(src.metrics)
    if src.optimizer is not None:
        try:
            dst.optimizer = optim.deserialize(src.optimizer.get_config())
        except (TypeError, ValueError):
            dst.optimizer = copy.deepcopy(src.optimizer)
        dst.optimizer.reset()
    dst.state = {k: copy.deepcopy(v) for k, v in src.state.items() if k != BACKUP_KEY}


def shrink(model):
    """A smaller model without the pruned hidden neurons, with the same predictions.

    Parameters
    ----------
    model : Sequential, built; typically pruned with ``method="structured"``

    Returns
    -------
    Sequential
        A new model: every hidden neuron whose column of W is entirely masked is removed, with
        the matching row of the next layer's W. Masks of what remains are carried over, the
        compile settings copied (optimizer state fresh), the recovery backup dropped.

    Raises
    ------
    TypeError, ValueError
        If `model` is not a built Sequential.

    Notes
    -----
    A neuron j whose weights are all pruned still outputs the constant
    c_j = act(b_j) (b_j masked; e.g. sigmoid(0) = 0.5), so the next layer receives
    sum_j c_j W_next[j, :] from it. That constant is folded into the next layer's bias,
    b_next += c_j * W_next[j, :], which keeps the predictions equal up to rounding (exactly
    for relu, tanh, identity and leaky_relu neurons with a zero bias, where c_j = 0). When
    the next layer has no bias and c_j W_next[j, :] is not 0, or every neuron of a layer is
    pruned (a layer keeps at least one unit, the lowest index), the neuron stays. The last
    layer's outputs and the model's inputs are never removed.

    References
    ----------
    Li et al. 2017, "Pruning Filters for Efficient ConvNets" (removing pruned channels and the
    matching inputs of the next layer).
    """
    model = check_model(model)
    layers = model.layers
    dtype = model.dtype
    keep_cols, fold = [], [None] * len(layers)
    for k, layer in enumerate(layers):
        if k == len(layers) - 1:
            keep_cols.append(np.arange(layer.units))
            break
        dead = ~layer.W_mask.any(axis=0)
        b = (apply_mask(layer.b, layer.b_mask) if layer.use_bias
             else np.zeros(layer.units, dtype=dtype))
        # the output of a neuron with no weights, computed by the very kernel forward uses
        const = kernels.bias_act(np.zeros((1, layer.units), dtype=dtype), b,
                                 kernels.ACTIVATION_CODES[layer.activation], layer.alpha)[0]
        nxt = layers[k + 1]
        contrib = const[:, None] * apply_mask(nxt.W, nxt.W_mask)
        if not nxt.use_bias:
            dead &= ~np.any(contrib != 0, axis=1)
        if dead.all():
            dead[0] = False
        keep_cols.append(np.flatnonzero(~dead))
        if nxt.use_bias and dead.any():
            fold[k + 1] = contrib[dead].sum(axis=0)
    new_layers = [Dense(**{**layer.get_config(), "units": int(cols.size)})
                  for layer, cols in zip(layers, keep_cols)]
    new = Sequential(new_layers, input_dim=model.input_dim, seed=model.seed, dtype=dtype)
    rows = np.arange(model.input_dim)
    for old, lay, cols, extra in zip(layers, new.layers, keep_cols, fold):
        grid = np.ix_(rows, cols)
        lay.W[...] = old.W[grid]
        lay.W_mask[...] = old.W_mask[grid]
        if old.use_bias:
            lay.b[...] = apply_mask(old.b, old.b_mask)[cols]
            lay.b_mask[...] = old.b_mask[cols]
            if extra is not None:
                lay.b[...] += extra[cols]
                # a folded constant on a pruned bias must stay, or the predictions change
                lay.b_mask[...] |= extra[cols] != 0
        rows = cols
    _copy_compile_settings(model, new)
    return new
