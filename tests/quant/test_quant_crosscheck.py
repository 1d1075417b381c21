"""Cross-checks of minscale.quant against PyTorch's quantization (skipped when torch is absent).

Peer: ``torch.quantize_per_tensor`` / ``torch.quantize_per_channel`` and the
``torch.ao.quantization`` observers (checked against torch 2.13.0+cpu).

Two documented differences shape these tests:

* torch quantizes with ``x * float32(1 / scale)``, minscale with one float64 ``x / scale``. With a
  power-of-two scale both are exact, so codes must be equal everywhere, halves included; with
  other scales they may differ only where ``x / scale`` lies within float32 rounding of a tie.
* torch's observers compute in float32, minscale in float64: zero points are equal, scales agree
  to float32 precision (relative 1e-6, a few float32 ulps).
"""

import numpy as np
import pytest

from minscale import quant

torch = pytest.importorskip("torch")
tq = pytest.importorskip("torch.ao.quantization")

pytestmark = [
    pytest.mark.crosscheck,
    # torch 2.13 announces the deprecation of quantized tensors on every creation call.
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning"),
]

DTYPES = {  # torch dtype -> (bits, signed)
    torch.qint8: (8, True),
    torch.quint8: (8, False),
    torch.qint32: (32, True),
}


def halves_and_noise(scale, zero_point, bits, signed, seed):
    """float32 values: every tie (k + 1/2) * scale over the code range and beyond, plus noise."""
    qmin, qmax = quant.integer_range(bits, signed)
    lo, hi = max(qmin, -300) - zero_point - 3, min(qmax, 300) - zero_point + 3
    ties = (np.arange(lo, hi) + 0.5) * scale
    noise = np.random.default_rng(seed).normal(scale=(hi - lo) * scale / 3, size=2000)
    return np.concatenate([ties, noise, [0.0, -0.0]]).astype(np.float32)


@pytest.mark.parametrize("tdtype", list(DTYPES))
@pytest.mark.parametrize("log2_scale", [0, -3, -7, 2])
@pytest.mark.parametrize("zero_point", [0, 2, -6, 100])
def test_quantize_per_tensor_codes_equal_torch(tdtype, log2_scale, zero_point):
    bits, signed = DTYPES[tdtype]
    qmin, qmax = quant.integer_range(bits, signed)
    zero_point = min(max(zero_point, qmin), qmax)
    assert zero_point % 2 == 0  # see test_odd_zero_point_ties_follow_round_then_add
    scale = 2.0**log2_scale
    x = halves_and_noise(scale, zero_point, bits, signed, seed=log2_scale + 10)
    theirs = (
        torch.quantize_per_tensor(torch.from_numpy(x), scale, zero_point, tdtype).int_repr().numpy()
    )
    ours = quant.quantize_affine(x, scale, zero_point, bits=bits, signed=signed)
    assert np.array_equal(ours.astype(np.int64), theirs.astype(np.int64))


@pytest.mark.parametrize("tdtype", [torch.qint8, torch.quint8])
@pytest.mark.parametrize("axis", [0, 1])
def test_quantize_per_channel_codes_equal_torch(tdtype, axis):
    bits, signed = DTYPES[tdtype]
    rng = np.random.default_rng(axis)
    shape = (6, 5)
    channels = shape[axis]
    scale = 2.0 ** rng.integers(-6, 1, size=channels).astype(np.float64)
    zero_point = 2 * rng.integers(-20, 20, size=channels) + (0 if signed else 128)
    x = rng.normal(size=shape) * 4
    # Put exact ties into every channel: x / scale = k + 1/2.
    ties = (rng.integers(-40, 40, size=shape) + 0.5) * np.expand_dims(scale, 1 - axis)
    x = np.where(rng.random(shape) < 0.5, ties, x).astype(np.float32)
    theirs = (
        torch.quantize_per_channel(
            torch.from_numpy(x), torch.from_numpy(scale), torch.from_numpy(zero_point), axis, tdtype
        )
        .int_repr()
        .numpy()
    )
    ours = quant.quantize_affine(x, scale, zero_point, bits=bits, signed=signed, axis=axis)
    assert np.array_equal(ours.astype(np.int64), theirs.astype(np.int64))


@pytest.mark.parametrize("scale", [0.1, 0.0123, 1 / 127, 0.3])
def test_general_scale_differs_only_next_to_ties(scale):
    x = np.random.default_rng(5).normal(size=100_000).astype(np.float32)
    theirs = (
        torch.quantize_per_tensor(torch.from_numpy(x), scale, 4, torch.qint8).int_repr().numpy()
    )
    ours = quant.quantize_affine(x, scale, 4)
    differ = ours != theirs
    frac = np.abs(np.abs(x.astype(np.float64) / scale) % 1.0 - 0.5)
    # float32's 1/scale carries a relative error <= 2**-24; |x / scale| < 800 here.
    assert np.all(frac[differ] < 800 * 2.0**-23)
    assert np.all(np.abs(ours.astype(int) - theirs.astype(int)) <= 1)


@pytest.mark.parametrize("zero_point", [1, -7, 33])
def test_odd_zero_point_ties_follow_round_then_add(zero_point):
    # minscale rounds x / scale, then adds the zero point (the order the issue fixes, and the
    # order of torch.fake_quantize_per_tensor_affine). torch.quantize_per_tensor in 2.13 adds
    # the zero point before rounding, so at exact ties with an odd zero point the two differ
    # by one code; elsewhere they agree.
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 3.5, 0.3, -1.7], np.float32)
    ours = quant.quantize_affine(x, 1.0, zero_point)
    assert ours.tolist() == (np.rint(x.astype(np.float64)) + zero_point).astype(int).tolist()
    fake = torch.fake_quantize_per_tensor_affine(
        torch.from_numpy(x), 1.0, zero_point, -128, 127
    ).numpy()
    assert np.array_equal(quant.fake_quantize(x, 1.0, zero_point), fake)
    per_tensor = (
        torch.quantize_per_tensor(torch.from_numpy(x), 1.0, zero_point, torch.qint8)
        .int_repr()
        .numpy()
    )
    ties = np.abs(x % 1.0 - 0.5) == 0
    assert np.array_equal(ours[~ties], per_tensor[~ties])
    assert np.all(np.abs(ours[ties].astype(int) - per_tensor[ties].astype(int)) == 1)


def _torch_qparams(observer, batches):
    for b in batches:
        observer(torch.from_numpy(b))
    scale, zp = observer.calculate_qparams()
    return scale.numpy().astype(np.float64), zp.numpy().astype(np.int64)


def _ours_qparams(observer, batches):
    for b in batches:
        observer.observe(b)
    scale, zp = observer.calculate_qparams()
    return np.atleast_1d(scale), np.atleast_1d(zp)


BATCHES = [
    [
        np.random.default_rng(s).normal(loc=0.4, scale=2.0, size=(32, 6)).astype(np.float32)
        for s in range(4)
    ],
    [np.random.default_rng(9).uniform(0.5, 3.0, size=(16, 6)).astype(np.float32)],  # all positive
    [np.random.default_rng(8).uniform(-3.0, -0.5, size=(16, 6)).astype(np.float32)],  # all negative
    [np.zeros((4, 6), np.float32)],  # all zero: scale eps
    [np.full((4, 6), 0.5, np.float32)],  # constant
]

SCHEMES = [  # (torch dtype, torch qscheme, our keyword arguments)
    (torch.quint8, torch.per_tensor_affine, dict(signed=False)),
    (torch.qint8, torch.per_tensor_symmetric, dict(signed=True, symmetric=True)),
    (torch.qint8, torch.per_tensor_affine, dict(signed=True)),
    (torch.quint8, torch.per_tensor_symmetric, dict(signed=False, symmetric=True)),
]


@pytest.mark.parametrize(
    "batches", BATCHES, ids=["normal", "positive", "negative", "zero", "constant"]
)
@pytest.mark.parametrize(
    "tdtype, qscheme, kw", SCHEMES, ids=["quint8-affine", "qint8-sym", "qint8-affine", "quint8-sym"]
)
def test_minmax_observer_qparams_equal_torch(batches, tdtype, qscheme, kw):
    t_scale, t_zp = _torch_qparams(tq.MinMaxObserver(dtype=tdtype, qscheme=qscheme), batches)
    o_scale, o_zp = _ours_qparams(quant.MinMaxObserver(**kw), batches)
    assert np.array_equal(o_zp, t_zp)
    np.testing.assert_allclose(o_scale, t_scale, rtol=1e-6)


@pytest.mark.parametrize("batches", BATCHES[:3], ids=["normal", "positive", "negative"])
@pytest.mark.parametrize("tdtype, qscheme, kw", SCHEMES[:2], ids=["quint8-affine", "qint8-sym"])
def test_moving_average_observer_qparams_equal_torch(batches, tdtype, qscheme, kw):
    t_scale, t_zp = _torch_qparams(
        tq.MovingAverageMinMaxObserver(dtype=tdtype, qscheme=qscheme), batches
    )
    o_scale, o_zp = _ours_qparams(quant.MovingAverageMinMaxObserver(**kw), batches)
    assert np.array_equal(o_zp, t_zp)
    np.testing.assert_allclose(o_scale, t_scale, rtol=1e-6)


@pytest.mark.parametrize(
    "tdtype, qscheme, kw",
    [
        (torch.qint8, torch.per_channel_symmetric, dict(signed=True, symmetric=True)),
        (torch.quint8, torch.per_channel_affine, dict(signed=False)),
    ],
    ids=["qint8-sym", "quint8-affine"],
)
@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_observer_qparams_equal_torch(tdtype, qscheme, kw, axis):
    batches = BATCHES[0] + [np.zeros((32, 6), np.float32)]
    t_scale, t_zp = _torch_qparams(
        tq.PerChannelMinMaxObserver(ch_axis=axis, dtype=tdtype, qscheme=qscheme), batches
    )
    o_scale, o_zp = _ours_qparams(quant.MinMaxObserver(axis=axis, **kw), batches)
    assert np.array_equal(o_zp, t_zp)
    np.testing.assert_allclose(o_scale, t_scale, rtol=1e-6)


def test_fake_quant_forward_and_gradient_equal_torch_away_from_the_edge():
    # torch passes the gradient where the rounded code is in range; minscale where x / scale is.
    # They agree except within half a step outside the range, which this input avoids.
    scale, zp = 0.05, -3
    x = np.random.default_rng(2).uniform(-10, 10, size=5000)
    lo, hi = (-128 - zp) * scale, (127 - zp) * scale
    x = x[~(((x > hi) & (x < hi + scale / 2)) | ((x < lo) & (x > lo - scale / 2)))]
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.fake_quantize_per_tensor_affine(xt, scale, zp, -128, 127)
    yt.sum().backward()
    np.testing.assert_allclose(
        quant.fake_quantize(x, scale, zp), yt.detach().numpy(), rtol=0, atol=1e-6
    )
    mask = quant.fake_quantize_grad_mask(x, scale, zp)
    assert np.array_equal(mask.astype(np.float64), xt.grad.numpy())
    assert 0 < mask.sum() < mask.size  # both kinds of inputs occur
