"""Tools for testing models and formulas: a gradient checker, mask invariants, strategies.

``check_gradients`` compares the analytic gradients of a model (or of any function with a
gradient) with central finite differences. ``assert_masks_preserved`` checks the pruning
invariant -- pruned weights are exactly zero and stay pruned. The hypothesis strategies
(``weight_arrays``, ``qformats``, ``sparsities``, ``architectures``, ``models``,
``data_sets``, ``models_and_data``) draw the inputs minscale's own property tests use, so users
can write the same kind of tests for their own models and formulas.

Hypothesis is imported only when a strategy is built, so ``check_gradients`` and
``assert_masks_preserved`` work without it (``pip install 'minscale[test]'`` brings it).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .data import plain
from .layers import ACTIVATIONS
from .losses import mse, mse_grad
from .model import Sequential
from .quant import FRAC_BITS_LIMIT, QFormat

__all__ = [
    "numeric_gradient", "check_gradients", "relative_error", "assert_masks_preserved",
    "weight_arrays", "qformats", "sparsities", "architectures", "models", "data_sets",
    "models_and_data",
]


# --- argument checks shared by the strategies ----------------------------------------------

def _hypothesis():
    try:
        from hypothesis import strategies as st  # noqa: PLC0415
        from hypothesis.extra import numpy as hnp  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - hypothesis is in the test extra
        raise ImportError("the minscale.testing strategies need hypothesis: "
                          "pip install 'minscale[test]'") from exc
    return st, hnp


def _int_range(name, value, minimum):
    """``(lo, hi)`` from an int or an inclusive ``(lo, hi)`` pair, both >= `minimum`."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a (lo, hi) pair of ints, got {plain(value)!r}")
    if isinstance(value, numbers.Integral):
        lo = hi = int(value)
    elif isinstance(value, tuple) and len(value) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
            for v in value):
        lo, hi = int(value[0]), int(value[1])
    else:
        raise TypeError(f"{name} must be an int or a (lo, hi) pair of ints, got {plain(value)!r}")
    if lo < minimum or hi < lo:
        raise ValueError(f"{name} must satisfy {minimum} <= lo <= hi, got {plain(value)!r}")
    return lo, hi


def _positive_float(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {plain(value)!r}")
    return float(value)


def _float_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt


def _shape_strategy(shape, max_dims, min_side, max_side, min_size):
    st, hnp = _hypothesis()
    if shape is not None:
        if isinstance(shape, numbers.Integral) and not isinstance(shape, (bool, np.bool_)):
            shape = (int(shape),)
        if not isinstance(shape, tuple) or not all(
                isinstance(d, numbers.Integral) and not isinstance(d, (bool, np.bool_))
                and d >= 0 for d in shape):
            raise ValueError("shape must be None, an int or a tuple of ints >= 0,"
                             f" got {plain(shape)!r}")
        if math.prod(shape) < min_size:
            raise ValueError(f"shape must have at least {min_size} entries here (ties need two "
                             f"equal magnitudes), got {plain(shape)!r}")
        return st.just(tuple(int(d) for d in shape))
    max_dims = _int_range("max_dims", max_dims, 1)[0]
    min_side = _int_range("min_side", min_side, 0)[0]
    max_side = _int_range("max_side", max_side, max(min_side, 1))[0]
    shapes = hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=min_side,
                              max_side=max_side)
    if min_size > 1:
        if max_side ** max_dims < min_size:
            raise ValueError(f"max_side={max_side}, max_dims={max_dims} cannot give the "
                             f"{min_size} entries ties need")
        shapes = shapes.filter(lambda s: math.prod(s) >= min_size)
    return shapes


# --- strategies ----------------------------------------------------------------------------

def weight_arrays(shape=None, *, dtype="float64", ties=None, max_magnitude=10.0,
                  min_magnitude=2.0**-10, max_dims=2, min_side=1, max_side=6):
    """Hypothesis strategy for finite weight arrays, with or without ties in magnitude.

    Parameters
    ----------
    shape : None, int or tuple of int
        Fixed shape; None draws one with 1..`max_dims` axes of `min_side`..`max_side` entries.
    dtype : {"float64", "float32"}, default "float64"
    ties : None, bool, default None
        None: any finite values in ``[-max_magnitude, max_magnitude]`` (zeros and ties
        possible, not forced). False: all ``|w|`` distinct and in ``[min_magnitude,
        max_magnitude]``, random signs, so every magnitude ranking is strict. True: values
        from the small grid ``max_magnitude * {0, 1/4, 1/2, 3/4, 1}`` with random signs, and at
        least two entries of equal ``|w|`` (the tie-breaking rule is always exercised; the
        array then has >= 2 entries).
    max_magnitude : float > 0, default 10
        Bound on ``|w|``; unit: the weights' own.
    min_magnitude : float > 0, default 2**-10
        Smallest ``|w|`` when ``ties=False`` (keeps subnormals out).
    max_dims, min_side, max_side : int
        Bounds of a drawn shape.

    Returns
    -------
    hypothesis.strategies.SearchStrategy of ndarray
        C-contiguous arrays of `dtype`; every entry finite.

    Raises
    ------
    ValueError
        A bad bound, dtype or shape, naming the argument; a fixed `shape` with fewer than 2
        entries and ``ties=True``.
    TypeError
        `ties` not None or a bool; a bound of the wrong type.

    Notes
    -----
    Built on ``hypothesis.extra.numpy.arrays`` with bounded float elements (the style
    ``STYLE.md`` prescribes); ``ties=False`` draws unique magnitudes (``unique=True``), then
    signs. The magnitude ranking with ties is what :func:`minscale.prune.magnitude_mask` and
    :func:`minscale.prune.global_magnitude_masks` break by flat index.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(weight_arrays(ties=False))
    ... def test_distinct(w):
    ...     assert np.unique(np.abs(w)).size == w.size
    >>> test_distinct()
    """
    st, hnp = _hypothesis()
    dt = _float_dtype(dtype)
    if ties is not None and not isinstance(ties, (bool, np.bool_)):
        raise TypeError(f"ties must be None, True or False, got {plain(ties)!r}")
    hi = _positive_float("max_magnitude", max_magnitude)
    lo = _positive_float("min_magnitude", min_magnitude)
    if lo >= hi:
        raise ValueError(f"min_magnitude must be < max_magnitude ({hi}), got {lo}")
    width = 32 if dt == np.float32 else 64
    if dt == np.float32:
        # the bounds themselves must be float32 numbers for hypothesis' width=32 floats
        hi = float(np.float32(hi)) if float(np.float32(hi)) <= hi else float(
            np.nextafter(np.float32(hi), np.float32(0)))
        lo = float(np.float32(lo)) if float(np.float32(lo)) >= lo else float(
            np.nextafter(np.float32(lo), np.float32(np.inf)))
    shapes = _shape_strategy(shape, max_dims, min_side, max_side, 2 if ties else 0)
    if ties is None:
        elements = st.floats(-hi, hi, allow_nan=False, allow_infinity=False, width=width)
        return shapes.flatmap(lambda s: hnp.arrays(dt, s, elements=elements))
    signs_of = lambda s: hnp.arrays(np.int8, s, elements=st.sampled_from([-1, 1]))  # noqa: E731

    if not ties:
        magnitudes = st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=width)

        @st.composite
        def distinct(draw):
            s = draw(shapes)
            mags = draw(hnp.arrays(dt, s, elements=magnitudes, unique=True))
            return (mags * draw(signs_of(s))).astype(dt)
        return distinct()

    grid = [float(dt.type(hi * f)) for f in (0.0, 0.25, 0.5, 0.75, 1.0)]

    @st.composite
    def tied(draw):
        s = draw(shapes)
        mags = draw(hnp.arrays(dt, s, elements=st.sampled_from(grid)))
        w = (mags * draw(signs_of(s))).astype(dt)
        flat = w.reshape(-1)
        if np.unique(np.abs(flat)).size == flat.size:
            # no tie drawn: copy a magnitude, keeping the sign of the entry it lands on
            flat[-1] = np.copysign(abs(flat[0]), flat[-1])
        return w
    return tied()


def qformats(bits=(2, 16), *, signed=None, frac_bits=None):
    """Hypothesis strategy for fixed-point formats :class:`minscale.quant.QFormat`.

    Parameters
    ----------
    bits : int or (lo, hi), default (2, 16)
        Total bits, inclusive range within 2..32.
    signed : None or bool, default None
        None draws both.
    frac_bits : None, int or (lo, hi)
        Fractional bits; None draws from ``-2 .. bits + 2`` (steps above 1 and formats whose
        step is finer than their range, both legal).

    Returns
    -------
    hypothesis.strategies.SearchStrategy of QFormat

    Raises
    ------
    ValueError, TypeError
        Bounds outside what :class:`~minscale.quant.QFormat` accepts, naming the argument.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(qformats(bits=8, signed=True))
    ... def test_range(fmt):
    ...     assert (fmt.qmin, fmt.qmax) == (-128, 127)
    >>> test_range()
    """
    st, _ = _hypothesis()
    b_lo, b_hi = _int_range("bits", bits, 2)
    if b_hi > 32:
        raise ValueError(f"bits must lie within 2..32, got {plain(bits)!r}")
    if signed is not None and not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"signed must be None, True or False, got {plain(signed)!r}")
    if frac_bits is not None:
        if isinstance(frac_bits, numbers.Integral) and not isinstance(frac_bits, bool):
            f_lo = f_hi = int(frac_bits)
        elif isinstance(frac_bits, tuple) and len(frac_bits) == 2:
            f_lo, f_hi = (int(v) for v in frac_bits)
        else:
            raise TypeError(f"frac_bits must be None, an int or a (lo, hi) pair, got "
                            f"{plain(frac_bits)!r}")
        if not -FRAC_BITS_LIMIT <= f_lo <= f_hi <= FRAC_BITS_LIMIT:
            raise ValueError(f"frac_bits must lie within [{-FRAC_BITS_LIMIT}, "
                             f"{FRAC_BITS_LIMIT}] with lo <= hi, got {plain(frac_bits)!r}")
    signs = st.booleans() if signed is None else st.just(bool(signed))

    @st.composite
    def formats(draw):
        b = draw(st.integers(b_lo, b_hi))
        f = draw(st.integers(-2, b + 2) if frac_bits is None else st.integers(f_lo, f_hi))
        return QFormat(b, f, draw(signs))
    return formats()


def sparsities(min_value=0.0, max_value=1.0):
    """Hypothesis strategy for sparsities: fractions of zeros in ``[min_value, max_value]``.

    Parameters
    ----------
    min_value, max_value : float, 0 <= min_value <= max_value <= 1

    Returns
    -------
    hypothesis.strategies.SearchStrategy of float
        Any float in the range, plus its end points and the half-way tie 0.5 (where
        ``round(s * n)`` rounds half to even) whenever they lie inside it, drawn often.

    Raises
    ------
    ValueError
        A bound outside [0, 1] or ``min_value > max_value`` (a percent is not a fraction).
    """
    st, _ = _hypothesis()
    for name, v in (("min_value", min_value), ("max_value", max_value)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) \
                or not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be a fraction in [0, 1], got {plain(v)!r}")
    if min_value > max_value:
        raise ValueError("min_value must be <= max_value,"
                         f" got {plain(min_value)!r} > {plain(max_value)!r}")
    specials = sorted({float(v) for v in (min_value, max_value, 0.5)
                       if min_value <= v <= max_value})
    return st.one_of(st.sampled_from(specials),
                     st.floats(float(min_value), float(max_value), allow_nan=False))


def architectures(*, input_dim=(1, 4), hidden_layers=(0, 2), width=(1, 5), output_dim=(1, 3),
                  activations=None, output_activation="identity", use_bias=None,
                  dtype="float64", seed=(0, 2**16)):
    """Hypothesis strategy for small architectures, as :meth:`Sequential.get_config` dicts.

    Parameters
    ----------
    input_dim, hidden_layers, width, output_dim : int or (lo, hi)
        d_in; number of hidden Dense layers; units of each hidden layer; d_out of the last.
    activations : sequence of str, optional
        Activations drawn for hidden layers (default: all of
        :data:`minscale.layers.ACTIVATIONS`).
    output_activation : str, default "identity"
        Activation of the last layer.
    use_bias : None or bool
        None draws it per layer.
    dtype : {"float64", "float32"}
    seed : int or (lo, hi)
        The model's initializer seed.

    Returns
    -------
    hypothesis.strategies.SearchStrategy of dict
        ``{"input_dim", "dtype", "seed", "layers": [Dense config, ...]}``; pass it to
        :meth:`minscale.model.Sequential.from_config` (or use :func:`models`).

    Raises
    ------
    ValueError, TypeError
        Bad bounds or an unknown activation, naming the argument.
    """
    st, _ = _hypothesis()
    d_in = _int_range("input_dim", input_dim, 1)
    n_hidden = _int_range("hidden_layers", hidden_layers, 0)
    units = _int_range("width", width, 1)
    d_out = _int_range("output_dim", output_dim, 1)
    seeds = _int_range("seed", seed, 0)
    dt = _float_dtype(dtype)
    acts = tuple(ACTIVATIONS if activations is None else activations)
    if not acts:
        raise ValueError("activations must name at least one activation, got an empty sequence")
    for a in (*acts, output_activation):
        if a not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {a!r}")
    if use_bias is not None and not isinstance(use_bias, (bool, np.bool_)):
        raise TypeError(f"use_bias must be None, True or False, got {plain(use_bias)!r}")
    biases = st.booleans() if use_bias is None else st.just(bool(use_bias))

    def layer(units_strategy, activation_strategy):
        return st.builds(
            lambda u, a, b: {"units": u, "activation": a, "use_bias": b,
                             "kernel_initializer": "glorot_uniform",
                             "bias_initializer": "zeros", "alpha": 0.01},
            units_strategy, activation_strategy, biases)

    @st.composite
    def configs(draw):
        k = draw(st.integers(*n_hidden))
        layers = [draw(layer(st.integers(*units), st.sampled_from(acts))) for _ in range(k)]
        layers.append(draw(layer(st.integers(*d_out), st.just(output_activation))))
        return {"input_dim": draw(st.integers(*d_in)), "dtype": dt.name,
                "seed": draw(st.integers(*seeds)), "layers": layers}
    return configs()


def models(**architecture_kwargs):
    """Hypothesis strategy for small built :class:`~minscale.model.Sequential` models.

    Parameters
    ----------
    **architecture_kwargs
        Passed to :func:`architectures`.

    Returns
    -------
    hypothesis.strategies.SearchStrategy of Sequential
        Built (weights initialized from the drawn seed), not compiled, all masks True.
    """
    return architectures(**architecture_kwargs).map(Sequential.from_config)


def data_sets(n_samples=(1, 12), n_features=(1, 4), n_outputs=(1, 3), *, dtype="float64",
              max_magnitude=5.0, min_magnitude=2.0**-10):
    """Hypothesis strategy for small regression data sets ``(X, y)``.

    Parameters
    ----------
    n_samples, n_features, n_outputs : int or (lo, hi)
        n, d_in and d_out.
    dtype : {"float64", "float32"}
    max_magnitude : float > 0, default 5
        Every entry lies in ``[-max_magnitude, max_magnitude]``.
    min_magnitude : float >= 0, default 2**-10
        Every entry is 0 or at least this large in magnitude. Tiny non-zero inputs make
        gradients smaller than the rounding noise of central differences (about
        ``u * |loss| / eps``, u the unit roundoff), where a gradient check cannot tell a right
        gradient from a wrong one; 0 keeps exact zeros in play.

    Returns
    -------
    hypothesis.strategies.SearchStrategy of (ndarray, ndarray)
        ``X`` of shape (n, d_in) and ``y`` of shape (n, d_out), both `dtype`, finite.

    Raises
    ------
    ValueError, TypeError
        Bad bounds, naming the argument.
    """
    st, hnp = _hypothesis()
    n = _int_range("n_samples", n_samples, 1)
    d_in = _int_range("n_features", n_features, 1)
    d_out = _int_range("n_outputs", n_outputs, 1)
    dt = _float_dtype(dtype)
    m = _positive_float("max_magnitude", max_magnitude)
    if not (0 <= min_magnitude < m):
        raise ValueError(f"min_magnitude must be in [0, max_magnitude={m}),"
                         f" got {plain(min_magnitude)!r}")
    return st.tuples(st.integers(*n), st.integers(*d_in), st.integers(*d_out)).flatmap(
        lambda s: st.tuples(_finite(hnp, st, dt, (s[0], s[1]), m, min_magnitude),
                            _finite(hnp, st, dt, (s[0], s[2]), m, min_magnitude)))


def _finite(hnp, st, dt, shape, m, lo=0.0):
    width = 32 if dt == np.float32 else 64
    bound = float(np.float32(m)) if width == 32 and float(np.float32(m)) <= m else m
    if width == 32 and bound > m:
        bound = float(np.nextafter(np.float32(m), np.float32(0)))
    if lo <= 0:
        return hnp.arrays(dt, shape, elements=st.floats(-bound, bound, allow_nan=False,
                                                        allow_infinity=False, width=width))
    lo = float(np.float32(lo)) if width == 32 else float(lo)
    size = st.floats(lo, bound, allow_nan=False, allow_infinity=False, width=width)
    signed = st.tuples(st.booleans(), size).map(lambda t: -t[1] if t[0] else t[1])
    return hnp.arrays(dt, shape, elements=st.one_of(st.just(0.0), signed))


def models_and_data(n_samples=(1, 12), max_magnitude=5.0, min_magnitude=2.0**-10,
                    **architecture_kwargs):
    """Hypothesis strategy for a small model together with a data set that fits it.

    Parameters
    ----------
    n_samples : int or (lo, hi), default (1, 12)
    max_magnitude : float > 0, default 5
        Bound on every entry of X and y.
    min_magnitude : float >= 0, default 2**-10
        Every entry of X and y is 0 or at least this large (see :func:`data_sets`).
    **architecture_kwargs
        Passed to :func:`architectures` (its `dtype` is also the data's).

    Returns
    -------
    hypothesis.strategies.SearchStrategy of (Sequential, ndarray, ndarray)
        ``(model, X, y)`` with ``X`` of shape (n, model.input_dim) and ``y`` of shape
        (n, model.output_dim).
    """
    st, hnp = _hypothesis()
    n = _int_range("n_samples", n_samples, 1)
    m = _positive_float("max_magnitude", max_magnitude)
    if not (0 <= min_magnitude < m):
        raise ValueError(f"min_magnitude must be in [0, max_magnitude={m}),"
                         f" got {plain(min_magnitude)!r}")

    @st.composite
    def cases(draw):
        model = draw(models(**architecture_kwargs))
        rows = draw(st.integers(*n))
        X = draw(_finite(hnp, st, model.dtype, (rows, model.input_dim), m, min_magnitude))
        y = draw(_finite(hnp, st, model.dtype, (rows, model.output_dim), m, min_magnitude))
        return model, X, y
    return cases()


# --- invariants ----------------------------------------------------------------------------

def _locate(model, index):
    """'layer i W[r, c]' or 'layer i b[c]' of a flat parameter index."""
    for i, (layer, (start, stop)) in enumerate(zip(model.layers, model.layer_slices())):
        if start <= index < stop:
            k = index - start
            if k < layer.W.size:
                r, c = divmod(k, layer.W.shape[1])
                return f"layer {i} W[{r}, {c}]"
            return f"layer {i} b[{k - layer.W.size}]"
    return f"flat index {index}"


def assert_masks_preserved(model, mask=None, *, exact=False, check_optimizer=True):
    """Assert the pruning invariant: pruned weights are exactly 0 and stay pruned.

    Parameters
    ----------
    model : Sequential, built
    mask : bool ndarray, shape (P,), optional
        A mask taken earlier (e.g. ``model.mask.copy()`` before training). Every entry it
        prunes must still be pruned in ``model.mask`` (no weight came back) and be 0.
    exact : bool, default False
        With `mask`: also require ``model.mask == mask`` (no new pruning either).
    check_optimizer : bool, default True
        Also require the optimizer's per-parameter state (``velocity``; Adam's ``m`` and
        ``v``) to be 0 at pruned entries, so a later update cannot revive them.

    Returns
    -------
    int
        The number of pruned parameters checked (to assert that a test was not vacuous).

    Raises
    ------
    AssertionError
        A pruned parameter (or its optimizer state) is not 0, an earlier pruned entry is
        kept again, the masks differ with ``exact=True``, or a layer's ``W``/``W_mask`` is no
        longer a view of the model's flat buffers; the message names layer and position.
    TypeError
        `model` is not a Sequential.
    ValueError
        `model` is not built, or `mask` has the wrong shape or dtype.

    Notes
    -----
    The invariant of ``DESIGN.md`` ("pruning masks re-applied: pruned weights stay exactly
    zero") and of ``torch.nn.utils.prune``'s forward pre-hook, checked on the flat buffers
    ``model.params`` and ``model.mask`` (True = kept). ``0.0 == -0.0``, so a pruned weight
    that became -0.0 passes.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a minscale Sequential, got {type(model).__name__}")
    if not model.built:
        raise ValueError("model must be built (it has no parameters yet)")
    if exact and mask is None:
        raise ValueError("exact=True needs a reference mask (mask=...)")
    for i, layer in enumerate(model.layers):
        if not (np.shares_memory(layer.W, model.params)
                and np.shares_memory(layer.W_mask, model.mask)):
            raise AssertionError(f"layer {i}'s W or W_mask is not a view of model.params / "
                                 "model.mask: the layers were unbound from the flat buffers")
    pruned = ~model.mask
    bad = np.flatnonzero(pruned & (model.params != 0))
    if bad.size:
        j = int(bad[0])
        value = float(model.params[j])
        raise AssertionError(f"{bad.size} pruned parameter(s) are not 0; the first, "
                             f"{_locate(model, j)} (flat index {j}), is {plain(value)!r}")
    if mask is not None:
        ref = np.asarray(mask)
        if ref.dtype != np.bool_ or ref.shape != model.mask.shape:
            raise ValueError(f"mask must be a bool array of shape {model.mask.shape}, got "
                             f"{ref.dtype} {ref.shape}")
        revived = np.flatnonzero(~ref & model.mask)
        if revived.size:
            j = int(revived[0])
            raise AssertionError(f"{revived.size} parameter(s) pruned in the reference mask "
                                 f"are kept again; the first is {_locate(model, j)} (flat "
                                 f"index {j})")
        if exact:
            changed = np.flatnonzero(ref != model.mask)
            if changed.size:
                j = int(changed[0])
                raise AssertionError(f"the mask changed at {changed.size} entr"
                                     f"{'y' if changed.size == 1 else 'ies'}; the first is "
                                     f"{_locate(model, j)} (flat index {j})")
    if check_optimizer and model.optimizer is not None:
        for name, buf in sorted(model.optimizer.state_arrays().items()):
            if isinstance(buf, np.ndarray) and buf.shape == model.params.shape:
                bad = np.flatnonzero(pruned & (buf != 0))
                if bad.size:
                    j = int(bad[0])
                    value = float(buf[j])
                    raise AssertionError(f"optimizer state {name!r} is {plain(value)!r} at pruned "
                                         f"{_locate(model, j)} (flat index {j}); it must be 0")
    return int(np.count_nonzero(pruned))


# --- gradient checks -----------------------------------------------------------------------

def relative_error(analytic, numeric, floor=1e-8):
    """Relative error of two gradients of one tensor: ``||a - n|| / max(||a|| + ||n||, floor)``.

    Parameters
    ----------
    analytic, numeric : ndarray, same shape
    floor : float
        Denominator floor, so that two gradients that are both ~0 do not count as an error.

    Returns
    -------
    float
        In [0, 1]; about 1e-7 or less for a correct float64 gradient. 0.0 for empty arrays.

    Notes
    -----
    Norm-based rather than elementwise, so one tiny entry whose finite difference is
    dominated by rounding does not decide the verdict (the CS231n gradient-check criterion,
    applied per tensor).
    """
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0
    return float(np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), floor))


def numeric_gradient(f, x, eps=1e-6):
    """Central-difference gradient of a scalar function, in float64.

    Parameters
    ----------
    f : callable
        ``f() -> float``, reading `x` (which this function perturbs in place and restores).
    x : ndarray, float64
        The variable; any shape.
    eps : float
        Step h of (f(x + h) - f(x - h)) / (2 h); truncation error O(h^2).

    Returns
    -------
    ndarray shaped like `x`, float64

    Notes
    -----
    g_i = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps), one coordinate at a time: 2 * x.size
    calls of `f`. Truncation error O(eps^2), rounding error O(u / eps) (u = unit roundoff).
    """
    grad = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        f_plus = f()
        flat[i] = old - eps
        f_minus = f()
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def check_gradients(model_or_fn, X, y=None, eps=1e-6, rtol=1e-5):
    """Compare analytic and central-difference gradients; return the worst relative errors.

    Parameters
    ----------
    model_or_fn : Sequential or callable
        A built float64 :class:`~minscale.model.Sequential` (its compiled reduction is used;
        the loss includes its kernel regularizers' penalties, as in training),
        or a function ``fn(X) -> (value, grad)`` returning a scalar and dvalue/dX.
    X : ndarray, float64, shape (n, d_in) for a model; any shape for a function
    y : ndarray, shape (n, d_out), required for a model
    eps : float
        Finite-difference step.
    rtol : float
        Error above which AssertionError is raised (``None``: never raise).

    Returns
    -------
    dict of str -> float
        For a model: ``{"layer0.W": err, "layer0.b": err, ..., "input": err}``, one
        :func:`relative_error` per parameter tensor (the error of the whole tensor) and one for
        dL/dX; for a function: ``{"input": err}``. The model's ``grads`` hold the analytic
        parameter gradient afterwards.

    Raises
    ------
    ValueError
        A model that is not float64 or not built, or a missing `y`.
    AssertionError
        Some error exceeds `rtol`.

    Notes
    -----
    Central differences have truncation error O(eps^2) and rounding error O(u / eps) with u the
    unit roundoff, so eps = 1e-6 suits float64 (CS231n notes on gradient checking).
    """
    X = np.asarray(X, dtype=np.float64)
    errors = {}
    if isinstance(model_or_fn, Sequential):
        model = model_or_fn
        if not model.built:
            model.build(X.shape[1])
        if model.dtype != np.float64:
            raise ValueError(f"check_gradients needs a float64 model, got {model.dtype}")
        if y is None:
            raise ValueError("y is required to check a model's gradients")
        y = np.asarray(y, dtype=np.float64).reshape(X.shape[0], -1)
        X = X.copy()
        model.compute_gradients(X, y)
        analytic = model.grads.copy()

        def loss():
            # the training loss compute_gradients differentiates: kernel penalties included
            return mse(y, model.forward(X), model.reduction) + model.penalty()

        numeric = numeric_gradient(loss, model.params, eps)
        y_hat = model.forward(X, training=True)
        dy = mse_grad(y, y_hat, model.reduction)
        for i in range(len(model.layers) - 1, -1, -1):
            dy = model.layers[i].backward(dy, need_dx=True)
        errors = {}
        for i, (layer, (start, stop)) in enumerate(zip(model.layers, model.layer_slices())):
            n_w = layer.W.size
            errors[f"layer{i}.W"] = relative_error(analytic[start:start + n_w],
                                                   numeric[start:start + n_w])
            if layer.use_bias:
                errors[f"layer{i}.b"] = relative_error(analytic[start + n_w:stop],
                                                       numeric[start + n_w:stop])
        errors["input"] = relative_error(dy, numeric_gradient(loss, X, eps))
        model.compute_gradients(X, y)  # leave grads as the analytic parameter gradient
    else:
        X = X.copy()
        _, analytic = model_or_fn(X)
        numeric = numeric_gradient(lambda: float(model_or_fn(X)[0]), X, eps)
        errors["input"] = relative_error(analytic, numeric)
    if rtol is not None:
        bad = {k: v for k, v in errors.items() if v > rtol}
        if bad:
            raise AssertionError(f"gradient check failed (rtol {rtol}): {bad}")
    return errors
