"""Recovery after pruning: weight rewinding and random re-initialization of the survivors.

The lottery-ticket experiments (Frankle & Carbin 2019, "The Lottery Ticket Hypothesis:
Finding Sparse, Trainable Neural Networks") keep the mask that magnitude pruning found on a
trained network and reset the surviving weights to the values they had at initialization
(:func:`rewind` with the initial weights), or draw them anew (:func:`reinitialize`, their
control), then retrain with the mask. Frankle et al. 2020 ("Linear Mode Connectivity and the
Lottery Ticket Hypothesis") rewind instead to the values after ``k`` training updates, which
:class:`WeightSnapshots` records while the dense network trains. Fine-tuning (keep the trained
survivors, train on) needs nothing beyond :func:`minscale.prune.prune`.

Every function keeps the model's mask: pruned weights stay exactly 0 and survivors take the
given values exactly.
"""
from __future__ import annotations

import numpy as np

from .. import _checks
from .model import check_model

__all__ = ["WeightSnapshots", "rewind", "reinitialize"]


class WeightSnapshots:
    """Training callback that copies the flat parameters after given numbers of updates.

    Parameters
    ----------
    steps : sequence of int, each >= 0
        Optimizer updates applied so far (``optimizer.iterations``, counted over every fit
        call of the model) at which to copy ``model.params``; 0 is the initial weights of a
        fresh optimizer.

    Attributes
    ----------
    weights : dict of int -> ndarray, shape (P,), the model's dtype
        The copies taken, by step. A step the training never reaches is missing.

    Raises
    ------
    ValueError, TypeError
        A step that is not an integer >= 0 (naming ``steps[i]``).

    Notes
    -----
    Works through the hooks of :class:`minscale.train.Callback` (duck-typed, so this module
    stays below ``minscale.train``): the copy for step ``k`` is taken before the forward pass
    of update ``k`` (``on_step_begin``), i.e. after ``k`` updates, or at the end of training
    when exactly ``k`` updates were applied by then. A model trained with a callback runs the
    general training loop (not the compiled one).

    Examples
    --------
    >>> import numpy as np, minscale as ms
    >>> model = ms.Sequential([ms.Dense(2), ms.Dense(1)], input_dim=2, seed=0)
    >>> snaps = WeightSnapshots([0, 3])
    >>> X, y = np.ones((8, 2)), np.ones((8, 1))
    >>> _ = model.fit(X, y, epochs=1, batch_size=2, seed=0, callbacks=[snaps])
    >>> sorted(snaps.weights), bool((snaps.weights[3] != snaps.weights[0]).any())
    ([0, 3], True)
    """

    def __init__(self, steps):
        if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
            raise TypeError(f"steps must be a sequence of integers, got {steps!r}")
        self.steps = tuple(sorted({_checks.check_int(f"steps[{i}]", s, 0)
                                   for i, s in enumerate(steps)}))
        self.weights = {}

    def _take(self, model, step):
        if step in self.steps and step not in self.weights:
            self.weights[step] = model.params.copy()

    def on_train_begin(self, model):
        """Nothing before the first batch (step 0 is taken at its ``on_step_begin``)."""

    def on_step_begin(self, model, step):
        """Copy the parameters if `step` updates have been applied and `step` was asked for."""
        self._take(model, int(step))

    def on_epoch_end(self, model, epoch, logs):
        """Nothing per epoch."""

    def on_train_end(self, model, history):
        """Copy the parameters if the last update's count was asked for."""
        if model.optimizer is not None:
            self._take(model, int(model.optimizer.iterations))


def _check_weights(model, weights, name):
    arr = np.asarray(weights)
    if arr.shape != model.params.shape:
        raise ValueError(f"{name} must have the model's parameter shape {model.params.shape}, "
                         f"got {arr.shape}")
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr


def _finish(model):
    np.copyto(model.params, 0, where=~model.mask)
    if model.optimizer is not None:
        model.optimizer.reset()  # retraining starts over: no moments, update counter 0
    return model


def rewind(model, weights):
    """Reset every surviving parameter to a snapshot; pruned ones stay 0 (lottery tickets).

    Parameters
    ----------
    model : Sequential, built (usually pruned)
    weights : ndarray, shape (P,), float
        Flat parameters to rewind to: the initial weights (``k = 0``, Frankle & Carbin 2019)
        or those after ``k`` updates (Frankle et al. 2020), e.g. from
        :class:`WeightSnapshots`.

    Returns
    -------
    model : Sequential
        The same object: ``params[mask] == weights[mask]`` exactly (biases, never pruned,
        included), ``params[~mask] == 0``, the mask unchanged, the optimizer reset (update
        counter 0, no moments). The pruning backup (for :func:`minscale.prune.restore`) is
        kept.

    Raises
    ------
    TypeError
        `model` is not a Sequential, or `weights` not a float array.
    ValueError
        `model` is not built, or `weights` has another shape or non-finite values.

    References
    ----------
    Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", Algorithm 1 step 4 (reset the
    remaining parameters to their values in theta_0); Frankle, Dziugaite, Roy & Carbin 2020,
    "Linear Mode Connectivity and the Lottery Ticket Hypothesis" (rewinding to theta_k).

    Examples
    --------
    >>> import numpy as np, minscale as ms
    >>> model = ms.Sequential([ms.Dense(4), ms.Dense(1)], input_dim=3, seed=0)
    >>> start = model.params.copy()
    >>> model.params[...] += 1.0
    >>> _ = ms.prune.prune(model, 0.5)
    >>> _ = rewind(model, start)
    >>> bool((model.params[model.mask] == start[model.mask]).all())
    True
    """
    model = check_model(model)
    arr = _check_weights(model, weights, "weights")
    np.copyto(model.params, arr.astype(model.params.dtype, copy=False), where=model.mask)
    return _finish(model)


def reinitialize(model, seed=0):
    """Draw every surviving parameter anew from the layers' initializers; pruned stay 0.

    Parameters
    ----------
    model : Sequential, built (usually pruned)
    seed : int >= 0 or numpy.random.Generator, default 0
        The draw: the same procedure as :meth:`minscale.model.Sequential.build` (each layer's
        ``initialize`` in order from ``numpy.random.default_rng(seed)``), so ``seed`` equal to
        the model's own seed gives its initial weights back and another seed a fresh draw.

    Returns
    -------
    model : Sequential
        The same object, the mask unchanged, pruned parameters 0, the optimizer reset.

    Raises
    ------
    TypeError, ValueError
        As :func:`rewind`, or a bad `seed`.

    References
    ----------
    Frankle & Carbin 2019, section 2 ("randomly reinitialized" control: the winning ticket's
    structure with new initial values, which trains slower and to a lower accuracy there).

    Examples
    --------
    >>> import minscale as ms
    >>> model = ms.prune.prune(ms.Sequential([ms.Dense(4), ms.Dense(1)], input_dim=3), 0.5)
    >>> float(reinitialize(model, seed=1).sparsity()["total"])
    0.5
    """
    model = check_model(model)
    rng = _checks.as_rng("seed", seed)
    for layer in model.layers:
        layer.initialize(rng)  # the draw of Sequential.build, into the flat buffer
    return _finish(model)
