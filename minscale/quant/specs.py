"""Weight and activation specs of a quantized model, and the storage of a quantized tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .. import sizes
from .._checks import check_bool, check_int
from .fixed_point import QFormat

__all__ = [
    "quantized_nbytes",
    "ACTIVATION_SPECS",
    "INTEGER_ACTIVATIONS",
    "WeightSpec",
    "weight_spec",
]

ACTIVATION_SPECS = ("int8", "uint8")


# Activations the integer-only path computes without a float operation (ReLU is a clamp).
INTEGER_ACTIVATIONS = ("identity", "relu")


@dataclass(frozen=True)
class WeightSpec:
    """How the weights W of every Dense layer are quantized (biases follow the activations).

    Parameters
    ----------
    bits : int, 2..32, default 8
    scheme : {"affine", "fixed"}, default "affine"
        ``affine``: symmetric, narrow range ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``, zero point
        0, scale ``max|W| / qmax`` per output channel or per tensor (TFLite int8 weights).
        ``fixed``: Qm.n fixed point, scale ``2**-frac_bits`` per tensor.
    per_channel : bool, default True
        affine only: one scale per output unit (column of W) rather than one per layer.
    frac_bits : int or None, default None
        fixed only: the format's fractional bits; None picks, per layer,
        :func:`choose_frac_bits` of that layer's W (the finest format that does not saturate).
    signed : bool, default True
        fixed only: signed or unsigned codes (affine weights are always signed).

    Attributes
    ----------
    name : str
        ``"int8"``, ``"int4/tensor"``, ``"Q3.4"`` or ``"fixed8/auto"``.

    Raises
    ------
    TypeError, ValueError
        Bad field values, naming the field.

    Examples
    --------
    >>> weight_spec("int4"), weight_spec(QFormat(8, 4)).name
    (WeightSpec(bits=4, scheme='affine', per_channel=True, frac_bits=None, signed=True), 'Q3.4')
    """

    bits: int = 8
    scheme: str = "affine"
    per_channel: bool = True
    frac_bits: int | None = None
    signed: bool = True

    def __post_init__(self):
        object.__setattr__(self, "bits", check_int("bits", self.bits, 2, 32))
        if self.scheme not in ("affine", "fixed"):
            raise ValueError(f"scheme must be 'affine' or 'fixed', got {self.scheme!r}")
        object.__setattr__(self, "per_channel", check_bool("per_channel", self.per_channel))
        object.__setattr__(self, "signed", check_bool("signed", self.signed))
        if self.frac_bits is not None:
            if self.scheme != "fixed":
                raise ValueError("frac_bits applies to scheme='fixed' only")
            QFormat(self.bits, self.frac_bits, self.signed)
            object.__setattr__(self, "frac_bits", int(self.frac_bits))
        if self.scheme == "affine" and not self.signed:
            raise ValueError(
                "affine weights are symmetric and signed; signed=False needs scheme='fixed'"
            )

    @property
    def name(self):
        if self.scheme == "fixed":
            if self.frac_bits is None:
                return f"{'' if self.signed else 'u'}fixed{self.bits}/auto"
            return QFormat(self.bits, self.frac_bits, self.signed).name
        return f"int{self.bits}" + ("" if self.per_channel else "/tensor")

    def to_config(self):
        """JSON-ready fields."""
        return {
            "bits": self.bits,
            "scheme": self.scheme,
            "per_channel": self.per_channel,
            "frac_bits": self.frac_bits,
            "signed": self.signed,
        }


def weight_spec(weights):
    """Normalize a weight quantization request to a :class:`WeightSpec`.

    Parameters
    ----------
    weights : str, QFormat, WeightSpec or dict
        ``"int8"`` (or ``"intN"``, N in 2..32): affine symmetric per-channel N-bit weights;
        a ``QFormat``: fixed point in exactly that format; a ``WeightSpec`` as is; a dict of
        WeightSpec fields.

    Returns
    -------
    WeightSpec

    Raises
    ------
    TypeError
        If weights is none of these.
    ValueError
        If a string is not ``"intN"`` with N in 2..32.
    """
    if isinstance(weights, WeightSpec):
        return weights
    if isinstance(weights, QFormat):
        return WeightSpec(weights.bits, "fixed", frac_bits=weights.frac_bits, signed=weights.signed)
    if isinstance(weights, dict):
        return WeightSpec(**weights)
    if isinstance(weights, str):
        if weights.startswith("int") and weights[3:].isdigit() and 2 <= int(weights[3:]) <= 32:
            return WeightSpec(int(weights[3:]))
        raise ValueError(
            f"weights must be 'intN' with N in 2..32, a QFormat or a WeightSpec, got {weights!r}"
        )
    raise TypeError(
        f"weights must be a str like 'int8', a QFormat or a WeightSpec, "
        f"got {type(weights).__name__}"
    )


def activation_spec(activations):
    """`activations` when it is None or one of ACTIVATION_SPECS; ValueError otherwise."""
    if activations is not None and activations not in ACTIVATION_SPECS:
        raise ValueError(
            f"activations must be one of {ACTIVATION_SPECS} or None, got {activations!r}"
        )
    return activations


def json_ready(state):
    """The entries of a state dict that are plain JSON (arrays and objects are left out)."""
    out = {}
    for key, value in state.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[str(key)] = value
    return out


def quantized_nbytes(n_codes, bits, n_scales=0, n_zero_points=0, packed=False):
    """Exact storage of a quantized tensor: codes + float32 scales + zero points, in bytes.

    Parameters
    ----------
    n_codes : int >= 0
        Number of quantized values.
    bits : int, 2..32
    n_scales : int >= 0, default 0
        Scales stored as float32, 4 bytes each (TFLite stores float32 scales). A fixed-point
        tensor's frac_bits can be counted here too, as its scale ``2**-frac_bits``.
    n_zero_points : int >= 0, default 0
        Zero points, stored like the codes (a zero point lies in [qmin, qmax]).
    packed : bool, default False
        False: each code (and zero point) takes ``ceil(bits / 8)`` whole bytes, as in a NumPy
        array of the smallest holding dtype (a 4-bit code takes 1 byte). True: codes packed
        back to back, ``ceil(n_codes * bits / 8)`` bytes (zero points likewise).

    Returns
    -------
    nbytes : int

    Raises
    ------
    TypeError, ValueError
        If a count is not a non-negative integer or bits is outside 2..32.

    Notes
    -----
    The formula is :func:`minscale.sizes.codes_bytes`; this wrapper adds quant's bit range.

    Examples
    --------
    >>> quantized_nbytes(1000, 8, n_scales=10, n_zero_points=10)
    1050
    >>> quantized_nbytes(1000, 4), quantized_nbytes(1000, 4, packed=True)
    (1000, 500)
    """
    n_codes = check_int("n_codes", n_codes, 0)
    bits = check_int("bits", bits, 2, 32)
    n_scales = check_int("n_scales", n_scales, 0)
    n_zero_points = check_int("n_zero_points", n_zero_points, 0)
    return sizes.codes_bytes(n_codes, bits, n_scales, n_zero_points, packed)
