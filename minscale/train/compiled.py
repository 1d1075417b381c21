"""The compiled training path: whole epochs per compiled call (Numba backend only).

The interface the rest of train uses is :func:`supports` and :func:`run`; the compiled epoch
loop itself is ``minscale.kernels._fastfit``, reached through
:func:`minscale.kernels.compiled_epochs` so that the NumPy path never imports Numba.
"""
from __future__ import annotations

from .. import kernels

# internal to train: fit dispatches here
__all__ = []


def supports(model, options):
    """Whether the compiled loop can run this fit call.

    Parameters
    ----------
    model : Sequential, compiled and built
    options : dict
        The keyword arguments :func:`run` would get (epochs, batch_size, shuffle, seed,
        validation_data, verbose, callbacks, pruning, pruning_method).

    Returns
    -------
    bool
        False on the NumPy backend, else what the compiled loop accepts (optimizer, schedule,
        activations, loss and options it implements).
    """
    fastfit = kernels.compiled_epochs()
    return fastfit is not None and fastfit.supports(model, **options)


def run(model, X, y, **options):
    """Train as :func:`minscale.train.loop.run` does, whole epochs per compiled call.

    Parameters
    ----------
    model : Sequential, compiled and built, accepted by :func:`supports`
    X, y : ndarray, shape (n, d_in) and (n, d_out), the model's dtype
    **options
        As for :func:`supports`.

    Returns
    -------
    History
    """
    return kernels.compiled_epochs().run(model, X, y, **options)
