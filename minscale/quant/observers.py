"""Range observers (state): running minimum and maximum of the tensors they see.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._checks import check_int, plain
from ._arrays import FLOAT32_EPS, as_float64, normalize_axis
from .affine import affine_qparams, channel_min_max
from .fixed_point import integer_range

__all__ = [
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
]

class MinMaxObserver:
    """Running minimum and maximum of observed tensors, turned into affine qparams.

    Parameters
    ----------
    bits : int, 2..32, default 8
    signed : bool, default True
    symmetric : bool, default False
    narrow_range : bool, default False
    axis : int or None, default None
        Channel axis for per-channel ranges (torch's ``PerChannelMinMaxObserver`` ``ch_axis``);
        None tracks one range for the whole tensor.
    eps : float, default FLOAT32_EPS
        Smallest scale (see :func:`affine_qparams`).

    Attributes
    ----------
    min_val, max_val : None, float, or float64 ndarray of shape (channels,)
        None until a non-empty tensor is observed.

    Raises
    ------
    As :func:`integer_range` and :func:`affine_qparams` for bad settings.

    Notes
    -----
    ``min_val = min(min_val, min(x))``, ``max_val = max(max_val, max(x))``; empty tensors are
    ignored, as torch does.

    References
    ----------
    ``torch.ao.quantization.MinMaxObserver`` / ``PerChannelMinMaxObserver``.

    Examples
    --------
    >>> obs = MinMaxObserver(signed=False)
    >>> _ = obs.observe([-1.0, 0.5]); _ = obs.observe([1.0])
    >>> obs.calculate_qparams()
    (0.00784313725490196, 128)
    """

    def __init__(
        self, bits=8, signed=True, symmetric=False, narrow_range=False, axis=None, eps=FLOAT32_EPS
    ):
        integer_range(bits, signed, narrow_range)
        affine_qparams(0.0, 0.0, bits, signed, symmetric, narrow_range, eps)
        self.bits, self.signed, self.symmetric = int(bits), bool(signed), bool(symmetric)
        self.narrow_range, self.eps = bool(narrow_range), float(eps)
        self.axis = None if axis is None else check_int("axis", axis)
        self.min_val = None
        self.max_val = None

    def _combine(self, old, new, pick):
        return pick(old, new)

    def observe(self, x):
        """Fold tensor `x` into the running range and return it unchanged.

        Parameters
        ----------
        x : array_like of float; per-channel observers need the same channel count each time

        Returns
        -------
        x : the input, unchanged (so an observer can sit in a forward pass)

        Raises
        ------
        ValueError
            If x has NaN, axis is out of range for x, or the channel count changed.
        """
        arr = as_float64("x", x)
        if arr.size == 0:
            return x
        axis = normalize_axis(self.axis, arr.ndim)
        cur_min, cur_max = channel_min_max(arr, axis)
        if self.min_val is None:
            self.min_val, self.max_val = cur_min, cur_max
        else:
            if np.shape(cur_min) != np.shape(self.min_val):
                raise ValueError(
                    f"x has {np.size(cur_min)} channels along axis {self.axis}, the observer saw "
                    f"{np.size(self.min_val)} before"
                )
            self.min_val = self._combine(self.min_val, cur_min, np.minimum)
            self.max_val = self._combine(self.max_val, cur_max, np.maximum)
            if np.ndim(self.min_val) == 0:
                self.min_val, self.max_val = float(self.min_val), float(self.max_val)
        return x

    __call__ = observe

    def calculate_qparams(self):
        """(scale, zero_point) of the observed range, as :func:`affine_qparams`.

        Raises
        ------
        ValueError
            If nothing has been observed yet.
        """
        if self.min_val is None:
            raise ValueError(
                "observer has seen no data; call observe(x) before calculate_qparams()"
            )
        return affine_qparams(
            self.min_val,
            self.max_val,
            self.bits,
            self.signed,
            self.symmetric,
            self.narrow_range,
            self.eps,
        )

    def reset(self):
        """Forget the observed range."""
        self.min_val = None
        self.max_val = None


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of per-batch minima and maxima.

    Parameters
    ----------
    averaging_constant : float in (0, 1], default 0.01
        Weight c of the newest batch (torch's default 0.01).
    bits, signed, symmetric, narrow_range, axis, eps
        As :class:`MinMaxObserver`.

    Raises
    ------
    ValueError
        If averaging_constant is outside (0, 1].

    Notes
    -----
    First batch: ``min_val = min(x)``; afterwards ``min_val += c * (min(x) - min_val)`` and the
    same for max_val.

    References
    ----------
    ``torch.ao.quantization.MovingAverageMinMaxObserver``; Jacob et al. 2018, section 3.1 (EMA of
    activation ranges during training).

    Examples
    --------
    >>> obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
    >>> _ = obs.observe([0.0, 2.0]); _ = obs.observe([0.0, 4.0])
    >>> obs.max_val
    3.0
    """

    def __init__(
        self,
        averaging_constant=0.01,
        bits=8,
        signed=True,
        symmetric=False,
        narrow_range=False,
        axis=None,
        eps=FLOAT32_EPS,
    ):
        if isinstance(averaging_constant, (bool, np.bool_)) or not (
            isinstance(averaging_constant, numbers.Real) and 0 < averaging_constant <= 1
        ):
            raise ValueError(f"averaging_constant must be in (0, 1], got {plain(averaging_constant)!r}")
        super().__init__(bits, signed, symmetric, narrow_range, axis, eps)
        self.averaging_constant = float(averaging_constant)

    def _combine(self, old, new, pick):
        return old + self.averaging_constant * (new - old)
