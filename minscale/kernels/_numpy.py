"""Reference kernels in NumPy.

Every function here has a twin of the same name and signature in ``_numba.py``; the tests
check that the two agree. Kernels work in place on preallocated, contiguous arrays; argument
checking and allocation happen in the callers (``layers.py``, ``optim.py``).

Activation codes (``act``) are :data:`minscale.kernels.ACTIVATION_CODES`:
0 identity, 1 relu, 2 leaky_relu, 3 tanh, 4 sigmoid.
"""
from __future__ import annotations

import functools

import numpy as np

NAME = "numpy"


def bias_act(z, b, act, alpha):
    """Add the bias and apply the activation, in place: ``z <- act(z + b)``.

    Parameters
    ----------
    z : ndarray, shape (n, d_out), float32 or float64, C-contiguous
        Pre-activations ``x @ W``; overwritten with the activation output ``a``.
    b : ndarray, shape (d_out,) or (0,), same dtype as `z`
        Bias; an empty array means no bias.
    act : int
        Activation code (0 identity, 1 relu, 2 leaky_relu, 3 tanh, 4 sigmoid).
    alpha : float
        Negative slope of leaky_relu (ignored otherwise).

    Returns
    -------
    z : ndarray
        The same array, now holding ``a``.

    Notes
    -----
    sigmoid(z) = 1 / (1 + exp(-z)), evaluated as exp(-|z|) based branches so that no
    exponential overflows.
    """
    if b.shape[0]:
        z += b
    if act == 1:
        np.maximum(z, 0, out=z)
    elif act == 2:
        np.multiply(z, np.where(z > 0, z.dtype.type(1), z.dtype.type(alpha)), out=z)
    elif act == 3:
        np.tanh(z, out=z)
    elif act == 4:
        e = np.exp(-np.abs(z))
        np.divide(np.where(z >= 0, z.dtype.type(1), e), 1 + e, out=z)
    return z


def act_backward(a, da, act, alpha, out):
    """Gradient through the activation, from its output: ``dz = da * act'(z)``.

    Parameters
    ----------
    a : ndarray, shape (n, d_out)
        Activation output from the forward pass.
    da : ndarray, shape (n, d_out)
        dL/da.
    act : int
        Activation code.
    alpha : float
        leaky_relu negative slope.
    out : ndarray, shape (n, d_out)
        Receives dL/dz; may be `da` itself.

    Returns
    -------
    out : ndarray

    Notes
    -----
    Derivatives written in terms of the output (scikit-learn's ``inplace_*_derivative``):
    relu: [a > 0]; leaky_relu: 1 if a > 0 else alpha (alpha > 0 keeps the sign); tanh:
    1 - a**2; sigmoid: a * (1 - a). At z = 0, relu and leaky_relu use the left derivative
    (0 and alpha), as PyTorch does.
    """
    one = a.dtype.type(1)
    if act == 0:
        if out is not da:
            np.copyto(out, da)
    elif act == 1:
        np.multiply(da, a > 0, out=out)
    elif act == 2:
        np.multiply(da, np.where(a > 0, one, a.dtype.type(alpha)), out=out)
    elif act == 3:
        np.multiply(da, one - a * a, out=out)
    elif act == 4:
        np.multiply(da, a * (one - a), out=out)
    return out


def sgd_update(theta, grad, lr, mask):
    """Plain gradient descent, in place: ``theta <- theta - lr * grad``.

    Parameters
    ----------
    theta, grad : ndarray, shape (P,), same float dtype
        Flat parameters and gradients. `grad` is zeroed where `mask` is False.
    lr : float
        Learning rate of this update (already in the dtype of `theta`).
    mask : ndarray of bool, shape (P,), or None
        True = kept. Pruned entries get no update and are set to exactly 0.
    """
    if mask is not None:
        grad *= mask
    theta -= lr * grad
    if mask is not None:
        theta *= mask


def momentum_update(theta, grad, velocity, lr, momentum, nesterov, mask):
    """SGD with (Nesterov) momentum, in place, as ``torch.optim.SGD`` (dampening 0).

    Parameters
    ----------
    theta, grad, velocity : ndarray, shape (P,), same float dtype
    lr, momentum : float
    nesterov : bool
    mask : ndarray of bool, shape (P,), or None

    Notes
    -----
    v <- momentum * v + grad;  theta <- theta - lr * (grad + momentum * v if nesterov else v).
    Pruned entries: grad, v and theta are set to 0.
    """
    if mask is not None:
        grad *= mask
    velocity *= momentum
    velocity += grad
    if nesterov:
        theta -= lr * (grad + momentum * velocity)
    else:
        theta -= lr * velocity
    if mask is not None:
        velocity *= mask
        theta *= mask


def adam_update(theta, grad, m, v, lr, beta_1, beta_2, epsilon, bias_correction_1,
                bias_correction_2, mask):
    """One Adam update, in place, with ``torch.optim.Adam``'s epsilon placement.

    Parameters
    ----------
    theta, grad, m, v : ndarray, shape (P,), same float dtype
        Parameters, gradients, first and second moment estimates.
    lr, beta_1, beta_2, epsilon : float
    bias_correction_1, bias_correction_2 : float
        1 - beta_1**t and 1 - beta_2**t for this update's t = step + 1.
    mask : ndarray of bool, shape (P,), or None

    Notes
    -----
    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    theta <- theta - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + epsilon)   (Kingma & Ba 2015, Alg. 1,
    with epsilon added to sqrt(v_hat) as torch.optim.Adam does).
    """
    if mask is not None:
        grad *= mask
    m *= beta_1
    m += (1 - beta_1) * grad
    v *= beta_2
    v += (1 - beta_2) * (grad * grad)
    denom = np.sqrt(v)
    denom /= np.sqrt(bias_correction_2)
    denom += epsilon
    theta -= (lr / bias_correction_1) * (m / denom)
    if mask is not None:
        m *= mask
        v *= mask
        theta *= mask


def bias_corrections(beta, t0, count):
    """Adam's bias corrections ``1 - beta ** t`` for ``t = t0 .. t0 + count - 1``.

    Parameters
    ----------
    beta : float, in [0, 1)
    t0 : int, >= 1
        First update number (Adam counts from 1: update ``step`` uses ``t = step + 1``).
    count : int, >= 0

    Returns
    -------
    float64 ndarray, shape (count,)
        Each element the Python expression :func:`minscale.optim.adam_step` evaluates at its
        step, bit for bit (Kingma & Ba 2015, Alg. 1: ``m_hat = m / (1 - beta_1 ** t)``).
        Read-only when kept for reuse (see Notes).

    Notes
    -----
    ``1 - beta ** t`` is a float to an int power (the C library's ``pow``), computed once per
    element in Python. A vectorized or compiled power could be another implementation of
    ``pow`` and differ in the last bit on some machines, so the Numba backend uses this same
    function rather than a twin; a run's corrections then equal the per-step ones of the
    general loop everywhere. Costs about 0.05 us an update; the last few results of up to
    2**16 entries are kept (read-only), so repeated runs with the same betas
    and length (a sweep, a benchmark) compute them once.
    """
    beta, t0, count = float(beta), int(t0), int(count)
    if count <= _BIAS_CACHE_MAX:
        return _bias_corrections_kept(beta, t0, count)
    return _bias_corrections(beta, t0, count)


#: bias-correction arrays of at most this many entries (512 KiB) are kept for reuse
_BIAS_CACHE_MAX = 1 << 16


@functools.lru_cache(maxsize=8)
def _bias_corrections_kept(beta, t0, count):
    out = _bias_corrections(beta, t0, count)
    out.flags.writeable = False  # shared between runs
    return out


def _bias_corrections(beta, t0, count):
    # float.__pow__ with an int exponent is the expression `beta ** t`; the subtraction from 1
    # is correctly rounded, so doing it on the array gives the same bits
    powers = np.fromiter(map(beta.__pow__, range(t0, t0 + count)), dtype=np.float64,
                         count=count)
    return 1.0 - powers


# --- quantization, integer arithmetic, pruning ---------------------------------------------
#
# These kernels are the fused hot paths behind minscale.quant and minscale.prune. Those modules
# own the formulas, the argument checks and the error messages; a kernel receives checked,
# contiguous arrays and writes into `out`. Results equal the formula functions bit for bit.

#: integer codes of the rounding rules, as the kernels take them (``stochastic`` needs a random
#: stream and stays in :func:`minscale.quant.round_values`)
ROUNDING_CODES = {"nearest_even": 0, "half_away": 1, "floor": 2}

_TINY = np.finfo(np.float64).tiny


def _round_rule(v, rounding):
    """Round float64 `v` (a new array) to integers under rule code `rounding`."""
    if rounding == 0:
        return np.rint(v)
    if rounding == 1:
        t = np.trunc(v)
        return t + np.copysign((np.abs(v - t) >= 0.5).astype(np.float64), v)
    return np.floor(v)


def quantize_fixed(x, frac_bits, qmin, qmax, rounding, out):
    """Fixed-point codes ``out = clip(round(x * 2**frac_bits), qmin, qmax)``, saturating.

    Parameters
    ----------
    x : ndarray of float32 or float64, any shape, C-contiguous
        Real values; NaN is the caller's to reject (its code is unspecified); +-inf saturates.
    frac_bits : int, in [-960, 960]
        Fractional bits n of the Qm.n format.
    qmin, qmax : int
        Code range, inside the range of `out`'s dtype.
    rounding : int
        :data:`ROUNDING_CODES`: 0 nearest_even, 1 half_away, 2 floor.
    out : ndarray of an integer dtype, shape of `x`, C-contiguous
        Receives the codes.

    Returns
    -------
    first_clipped : int
        Flat index of the first entry whose unsaturated code lies outside ``[qmin, qmax]``
        (it was saturated), or -1 if none; the caller decides whether that is an error
        (``saturate=False`` in :func:`minscale.quant.quantize`).

    Notes
    -----
    ``v = x * 2**frac_bits`` in float64 is exact (a power-of-two scaling; IEEE multiplication and
    ``ldexp`` round an underflowing product the same way). A negative input whose product
    underflowed to -0.0 is treated as the tiny negative value it was, so ``floor`` gives -1.
    Clipping at the integer bounds commutes with every rounding rule.

    References
    ----------
    :func:`minscale.quant.quantize` (the formula layer); saturation as ARM CMSIS ``__SSAT``.
    """
    x64 = x.astype(np.float64)
    v = np.ldexp(x64, frac_bits)
    v = np.where((v == 0) & (x64 < 0), -_TINY, v)
    r = _round_rule(np.clip(v, qmin - 1.0, qmax + 1.0), rounding)
    bad = (r < qmin) | (r > qmax)
    np.clip(r, qmin, qmax, out=r)
    out[...] = r.astype(out.dtype)
    return int(np.argmax(bad.ravel())) if bad.any() else -1


def dequantize_fixed(q, frac_bits, out):
    """Real values of fixed-point codes, ``out = q * 2**-frac_bits``.

    Parameters
    ----------
    q : ndarray of an integer dtype, any shape, C-contiguous
    frac_bits : int, in [-960, 960]
    out : ndarray of float32 or float64, shape of `q`
        Receives the values: exact in float64 (codes below 2**53), one rounding in float32.

    Returns
    -------
    out : ndarray

    References
    ----------
    :func:`minscale.quant.dequantize`.
    """
    out[...] = np.ldexp(q.astype(np.float64), -frac_bits).astype(out.dtype)
    return out


def quantize_affine(x, scale, zero_point, qmin, qmax, rounding, out):
    """Affine codes ``q = clip(round(x / scale) + zero_point, qmin, qmax)``, per channel.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (n_outer, C, n_inner), C-contiguous
        The tensor seen as channels on axis 1: per tensor is ``x.reshape(1, 1, -1)``; channel
        axis `a` of a tensor of shape s is ``reshape(prod(s[:a]), s[a], prod(s[a+1:]))``.
    scale : float64 ndarray, shape (C,), finite and > 0
    zero_point : int64 ndarray, shape (C,), in [qmin, qmax]
    qmin, qmax : int
    rounding : int
        :data:`ROUNDING_CODES`.
    out : ndarray of an integer dtype, shape of `x`

    Returns
    -------
    out : ndarray

    Notes
    -----
    Divide (one float64 rounding), round, add the zero point, clamp -- the order of
    :func:`minscale.quant.quantize_affine`, with its -0.0 underflow rule. Clipping
    ``x / scale`` to ``[qmin - zp, qmax - zp]`` before rounding equals clamping the code after.

    References
    ----------
    Jacob et al. 2018, eq. (1); ``torch.quantize_per_tensor`` / ``quantize_per_channel``.
    """
    s = scale.reshape(1, -1, 1)
    zp = zero_point.reshape(1, -1, 1)
    x64 = x.astype(np.float64)
    v = x64 / s
    v = np.where((v == 0) & (x64 < 0), -_TINY, v)
    r = _round_rule(np.clip(v, (qmin - zp).astype(np.float64), (qmax - zp).astype(np.float64)),
                    rounding)
    out[...] = (r.astype(np.int64) + zp).astype(out.dtype)
    return out


def quantize_affine_checked(x, scale, zero_point, qmin, qmax, rounding, out):
    """:func:`quantize_affine` that also looks for NaN, for callers that must reject it.

    Parameters
    ----------
    x, scale, zero_point, qmin, qmax, rounding, out
        As :func:`quantize_affine`; `x` may contain NaN.

    Returns
    -------
    first_nan : int
        Flat (C-order) index of the first NaN of `x`, or -1 if there is none. When it is >= 0,
        `out` is unspecified (this reference does not write it).

    Notes
    -----
    The Numba twin finds NaN inside its quantizing pass, at no extra cost; the public
    :func:`minscale.quant.quantize_affine` raises on ``first_nan >= 0``.

    References
    ----------
    As :func:`quantize_affine`.
    """
    nan = np.isnan(x).reshape(-1)
    if nan.any():
        return int(np.argmax(nan))
    quantize_affine(x, scale, zero_point, qmin, qmax, rounding, out)
    return -1


def dequantize_affine(q, scale, zero_point, out):
    """Real values of affine codes, ``out = scale * (q - zero_point)``, per channel.

    Parameters
    ----------
    q : ndarray of an integer dtype, shape (n_outer, C, n_inner), C-contiguous
    scale : float64 ndarray, shape (C,)
    zero_point : int64 ndarray, shape (C,)
    out : ndarray of float32 or float64, shape of `q`

    Returns
    -------
    out : ndarray
        ``q - zero_point`` exact in int64, one float64 multiplication, one cast to out's dtype.

    References
    ----------
    :func:`minscale.quant.dequantize_affine`.
    """
    d = q.astype(np.int64) - zero_point.reshape(1, -1, 1)
    out[...] = (scale.reshape(1, -1, 1) * d).astype(out.dtype)
    return out


def fake_quantize(x, scale, zero_point, qmin, qmax, rounding, out, pass_mask):
    """Quantize-dequantize in one pass, with the straight-through-estimator mask.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (n_outer, C, n_inner), C-contiguous
    scale : float64 ndarray, shape (C,)
    zero_point : int64 ndarray, shape (C,)
    qmin, qmax : int
    rounding : int
        :data:`ROUNDING_CODES`.
    out : ndarray, dtype and shape of `x`
        Receives ``scale * (q - zero_point)``, computed in float64 and cast once.
    pass_mask : bool ndarray, shape of `x`, or of size 0
        Receives True where ``qmin - zp <= x / scale <= qmax - zp`` (the gradient passes); a
        size-0 array skips it.

    Returns
    -------
    out : ndarray

    References
    ----------
    :func:`minscale.quant.fake_quantize` and :func:`minscale.quant.fake_quantize_grad_mask`;
    Bengio et al. 2013 (STE); Jacob et al. 2018, section 3.
    """
    s = scale.reshape(1, -1, 1)
    zp = zero_point.reshape(1, -1, 1)
    x64 = x.astype(np.float64)
    v = x64 / s
    lo = (qmin - zp).astype(np.float64)
    hi = (qmax - zp).astype(np.float64)
    if pass_mask.size:
        pass_mask[...] = (v >= lo) & (v <= hi)
    v = np.where((v == 0) & (x64 < 0), -_TINY, v)
    r = _round_rule(np.clip(v, lo, hi), rounding)
    out[...] = (s * r).astype(out.dtype)
    return out


def int8_matmul(a, b, a_zero_point, b_zero_point, out):
    """8-bit integer matrix product with exact int32 results: ``sum_k (a - za)(b - zb)``.

    Parameters
    ----------
    a : int8 or uint8 ndarray, shape (n, k), C-contiguous
    b : int8 or uint8 ndarray, shape (k, m), C-contiguous
    a_zero_point : int
        In a's dtype range.
    b_zero_point : int64 ndarray, shape (m,)
        Per output column (a per-tensor zero point repeated m times), in b's dtype range.
    out : int32 ndarray, shape (n, m)
        Receives ``out[i, j] = sum_k (a[i, k] - za) * (b[k, j] - zb[j])``.

    Returns
    -------
    ok : bool
        False if some sum left the int32 range (``out`` is then unspecified); the caller
        raises, as hardware would wrap.

    Notes
    -----
    Float64 BLAS on the shifted codes, exact: each factor has magnitude <= 255, each product
    <= 65025 < 2**16, and every partial sum, in whatever order the BLAS adds, is an integer of
    magnitude <= k * 65025 < 2**53 for k <= 2**36, so no addition rounds.

    References
    ----------
    :func:`minscale.quant.int_matmul`; Jacob et al. 2018, eq. (7); gemmlowp.
    """
    acc = (a.astype(np.float64) - a_zero_point) @ (b.astype(np.float64) - b_zero_point)
    if acc.size and (acc.min() < -2.0**31 or acc.max() > 2.0**31 - 1):
        return False
    out[...] = acc.astype(np.int32)
    return True


def requantize(acc, bias, quantized_multiplier, shift, zero_point, lower, upper, out):
    """int32 accumulators (+ bias) to output codes with gemmlowp/TFLite integer rounding.

    Parameters
    ----------
    acc : int32 ndarray, shape (n, m), C-contiguous
    bias : int32 ndarray, shape (m,), or of size 0 for no bias
        Added in int64 before rescaling (the sum must fit int32).
    quantized_multiplier : int64 ndarray, shape (m,) or (1,)
        ``M0`` in [0, 2**31) per output column, or one for all.
    shift : int64 ndarray, shape of `quantized_multiplier`
        In [-31, 30]; left shift when positive, right shift when negative.
    zero_point : int
        Output zero point.
    lower, upper : int
        Clamp bounds: ``qmin`` (``max(qmin, zero_point)`` for a fused ReLU) and ``qmax``.
    out : ndarray of an integer dtype holding [lower, upper], shape (n, m)

    Returns
    -------
    ok : bool
        False if ``acc + bias`` or ``(acc + bias) * 2**left`` left int32, where
        :func:`minscale.quant.multiply_by_quantized_multiplier` raises (``out`` unspecified).

    Notes
    -----
    x = acc + bias; s = x * 2**left; ab = s * M0 (int64);
    h = trunc((ab + (2**30 if ab >= 0 else 1 - 2**30)) / 2**31)  (SaturatingRoundingDoublingHighMul);
    r = (h >> right) + ((h & mask) > (mask >> 1) + (h < 0)), mask = 2**right - 1
    (RoundingDivideByPOT); out = clip(r + zero_point, lower, upper).

    References
    ----------
    gemmlowp ``fixedpoint.h``; TFLite ``MultiplyByQuantizedMultiplier`` and the int8
    ``FullyConnected`` reference kernel; :func:`minscale.quant.requantize`.
    """
    x = acc.astype(np.int64)
    if bias.size:
        x = x + bias.astype(np.int64)
    m0 = quantized_multiplier.astype(np.int64)
    sh = shift.astype(np.int64)
    left = np.maximum(sh, 0)
    right = np.maximum(-sh, 0)
    lim_lo, lim_hi = -2**31, 2**31 - 1
    if x.size and (x.min() < lim_lo or x.max() > lim_hi):
        return False
    s = x << left
    if s.size and (s.min() < lim_lo or s.max() > lim_hi):
        return False
    ab = s * m0
    n = ab + np.where(ab >= 0, 2**30, 1 - 2**30)
    h = np.where(n >= 0, n // 2**31, -((-n) // 2**31))
    mask = (np.int64(1) << right) - 1
    r = (h >> right) + ((h & mask) > (mask >> 1) + (h < 0))
    out[...] = np.clip(r + zero_point, lower, upper).astype(out.dtype)
    return True


class PackedWeights:
    """An 8-bit weight matrix prepared once for many integer products (:func:`pack_int8_weights`).

    Attributes
    ----------
    w : float32 ndarray, shape (k, m), C-contiguous
        ``b - b_zero_point`` per column, exact (integers of magnitude <= 255).
    colsum : int64 ndarray, shape (m,)
        Column sums of ``b - b_zero_point``, exact.
    wmax : int
        Largest ``|b - b_zero_point|`` (0 for an empty matrix).
    source_dtype : numpy.dtype
        int8 or uint8, the dtype of the codes it was packed from.

    Notes
    -----
    Holds 4 bytes per weight; it is a cache derived from the codes, not a storage format.
    """

    __slots__ = ("w", "colsum", "wmax", "source_dtype")

    def __init__(self, w, colsum, wmax, source_dtype):
        self.w, self.colsum, self.wmax, self.source_dtype = w, colsum, int(wmax), source_dtype

    @property
    def shape(self):
        return self.w.shape

    def __repr__(self):
        return f"PackedWeights(shape={self.w.shape}, from {self.source_dtype}, wmax={self.wmax})"


def pack_int8_weights(b, b_zero_point):
    """Pack 8-bit weight codes for :func:`int8_matmul_packed` and :func:`int8_dense_packed`.

    Parameters
    ----------
    b : int8 or uint8 ndarray, shape (k, m)
    b_zero_point : int64 ndarray, shape (m,)
        Per output column (a per-tensor zero point repeated m times), in b's dtype range.

    Returns
    -------
    PackedWeights
        ``w = float32(b - b_zero_point)``, its column sums and its largest magnitude.

    Notes
    -----
    Each entry ``b - zb`` is an integer of magnitude <= 255, exact in float32. The conversion
    happens once per weight matrix instead of once per product (torch's dynamic-quantized
    Linear and FBGEMM prepack their weights for the same reason).

    References
    ----------
    gemmlowp ``PackRhs``; FBGEMM ``PackBMatrix``.
    """
    c = b.astype(np.int64) - np.asarray(b_zero_point, dtype=np.int64).reshape(1, -1)
    wmax = int(np.abs(c).max()) if c.size else 0
    return PackedWeights(np.ascontiguousarray(c, dtype=np.float32), c.sum(axis=0), wmax,
                         np.dtype(b.dtype))


def int8_matmul_packed(a, packed, a_zero_point, out):
    """:func:`int8_matmul` with pre-packed weights: ``out = sum_k (a - za) * packed.w``.

    Parameters
    ----------
    a : int8 or uint8 ndarray, shape (n, k), C-contiguous
    packed : PackedWeights
        From :func:`pack_int8_weights` of b (k, m) and its zero points.
    a_zero_point : int
        In a's dtype range.
    out : int32 ndarray, shape (n, m)

    Returns
    -------
    ok : bool
        False if some sum left the int32 range (``out`` is then unspecified).

    Notes
    -----
    Equals ``int8_matmul(a, b, a_zero_point, b_zero_point, out)`` bit for bit: the same sums,
    with ``b - zb`` read from the pack. Float64 BLAS, exact by the bound of :func:`int8_matmul`.

    References
    ----------
    As :func:`int8_matmul`.
    """
    acc = (a.astype(np.float64) - a_zero_point) @ packed.w.astype(np.float64)
    if acc.size and (acc.min() < -2.0**31 or acc.max() > 2.0**31 - 1):
        return False
    out[...] = acc.astype(np.int32)
    return True


def int8_dense_packed(a, packed, a_zero_point, bias, quantized_multiplier, shift, zero_point,
                      lower, upper, out):
    """Integer-only dense layer: :func:`int8_matmul_packed`, then :func:`requantize`, fused.

    Parameters
    ----------
    a : int8 or uint8 ndarray, shape (n, k), C-contiguous
    packed : PackedWeights
    a_zero_point : int
    bias, quantized_multiplier, shift, zero_point, lower, upper
        As :func:`requantize`.
    out : ndarray of an integer dtype holding [lower, upper], shape (n, m)
        Receives the output codes.

    Returns
    -------
    ok : bool
        ``int8_matmul_packed(...) and requantize(...)``: False if an accumulator, ``acc + bias``
        or its left shift left int32 (``out`` unspecified).

    References
    ----------
    TFLite int8 ``FullyConnected``; Jacob et al. 2018, section 2.4.
    """
    acc = np.empty(out.shape, dtype=np.int32)
    if not int8_matmul_packed(a, packed, a_zero_point, acc):
        return False
    return requantize(acc, bias, quantized_multiplier, shift, zero_point, lower, upper, out)


def count_zeros(mask, start):
    """``start`` plus the number of False (pruned) entries of a mask.

    Parameters
    ----------
    mask : bool ndarray, any shape, C-contiguous
    start : int
        Added once (Python's ``sum(iterable, start)``); a parallel reduction must not add it
        once per thread.

    Returns
    -------
    int

    Examples
    --------
    >>> count_zeros(np.array([True, False, True, False, False, True, True, True, True, True]), 1)
    4
    """
    return int(start) + int(mask.size - np.count_nonzero(mask))


def keep_all_but_smallest(scores, k, keep):
    """Keep-mask pruning the `k` smallest scores; ties at the cut: lower index pruned first.

    Parameters
    ----------
    scores : float32 or float64 ndarray, shape (n,), finite
    k : int, in [0, n]
    keep : bool ndarray, shape (n,)
        Receives the mask (True = kept); exactly k entries become False.

    Returns
    -------
    keep : ndarray

    Notes
    -----
    t = the k-th smallest score (``np.partition(scores, k - 1)[k - 1]``); scores < t are
    pruned, scores > t kept, and the first ``k - #(scores < t)`` scores equal to t (in index
    order) pruned. Scores are compared as numbers: -0.0 equals 0.0.

    References
    ----------
    :func:`minscale.prune.magnitude_mask` (the rule and its tie-breaking); Han et al. 2015.
    """
    n = scores.size
    if k <= 0:
        keep[...] = True
        return keep
    if k >= n:
        keep[...] = False
        return keep
    threshold = np.partition(scores, k - 1)[k - 1]
    np.greater(scores, threshold, out=keep)
    ties = np.flatnonzero(scores == threshold)
    n_below = n - int(np.count_nonzero(keep)) - ties.size
    keep[ties[k - n_below:]] = True
    return keep


# --- integer-only fixed point (Qm.n, power-of-two scales) ----------------------------------

#: rounding of the requantizing shift, as the ``rounding`` code of :func:`fixed_dense`
FIXED_ROUNDING_CODES = {"half_away": 0, "nearest_even": 1}


def fixed_dense(x, w, bias, shift, rounding, lower, upper, out):
    """Integer-only fixed-point dense layer: ``clamp(shift_round(x @ w + bias, shift))``.

    Parameters
    ----------
    x : int8 or int16 ndarray, shape (n, k), C-contiguous
        Activation codes at frac_in.
    w : int8 or int16 ndarray, shape (k, m), C-contiguous
        Weight codes at frac_w.
    bias : int64 ndarray, shape (m,), or of size 0 for no bias
        At frac_in + frac_w, ``|acc + bias| < 2**61``.
    shift : int
        ``frac_in + frac_w - frac_out``: right shift when positive, left when negative.
    rounding : int
        :data:`FIXED_ROUNDING_CODES`: 0 half away from zero, 1 half to even.
    lower, upper : int
        Clamp bounds (0 after a ReLU, else qmin; qmax).
    out : int8 or int16 ndarray, shape (n, m)

    Notes
    -----
    acc = x @ w, exact in float64 BLAS (each product <= 2**30, every partial sum an integer
    below 2**53 for k < 2**23); v = acc + bias; shift > 0: half away
    ``sign(v) * ((|v| + 2**(s-1)) >> s)`` or half even ``q = v >> s, r = v - q * 2**s,
    q + (r > h or (r == h and q odd))``, s = min(shift, 62); shift <= 0:
    ``clip(v, -2**16, 2**16) << min(-shift, 31)``; then clip to [lower, upper].

    References
    ----------
    :func:`minscale.quant.fixed_shift_round`; CMSIS-NN ``arm_fully_connected_q7``.
    """
    acc = np.rint(x.astype(np.float64) @ w.astype(np.float64)).astype(np.int64)
    if bias.size:
        acc = acc + bias
    if shift <= 0:
        y = np.clip(acc, -(2**16), 2**16) << min(-shift, 31)
    else:
        s = min(shift, 62)
        half = np.int64(1) << (s - 1)
        if rounding == 0:
            mag = (np.abs(acc) + half) >> s
            y = np.where(acc < 0, -mag, mag)
        else:
            q = acc >> s
            r = acc - (q << s)
            y = q + ((r > half) | ((r == half) & ((q & 1) == 1)))
    out[...] = np.clip(y, lower, upper)
