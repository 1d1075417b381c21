"""Cross-check of minscale.prune masks against ``torch.nn.utils.prune``.

On tie-free data (random normal weights, all magnitudes distinct) torch's ``topk``-based
selection is unique, so the masks must be identical; for the random rule only the count is
comparable. A ``torch.nn.Linear`` holds its weight as (out, in) = W.T for minscale's W of
shape (d_in, d_out), so output neurons are torch's ``dim=0`` and minscale's ``axis=-1``.
Skipped when torch is not installed.
"""

import numpy as np
import pytest

from minscale.prune import global_magnitude_masks, magnitude_mask, random_mask, structured_mask

torch = pytest.importorskip("torch")
prune = pytest.importorskip("torch.nn.utils.prune")

pytestmark = pytest.mark.crosscheck

AMOUNTS = [0.0, 0.1, 0.29, 0.5, 0.77, 0.9, 1.0]
SHAPES = [(10, 10), (7, 13), (1, 9), (33, 4)]


def tie_free(shape, seed):
    w = np.random.default_rng(seed).standard_normal(shape)
    assert np.unique(np.abs(w)).size == w.size, "drawn data has ties; pick another seed"
    return w


def linear_with(w):
    """A float64 torch Linear whose weight is W.T, for W of shape (d_in, d_out)."""
    d_in, d_out = w.shape
    layer = torch.nn.Linear(d_in, d_out, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w.T.copy()))
    return layer


def torch_mask(layer):
    """The layer's torch mask, transposed back to minscale's (d_in, d_out), as bool."""
    return layer.weight_mask.detach().numpy().T.astype(bool)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("amount", AMOUNTS)
def test_l1_unstructured_same_mask(shape, amount):
    w = tie_free(shape, seed=sum(shape))
    layer = linear_with(w)
    prune.l1_unstructured(layer, "weight", amount=amount)
    expected = torch_mask(layer)
    ours = magnitude_mask(w, amount)
    assert int((~ours).sum()) == int((~expected).sum())
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("amount", AMOUNTS)
def test_global_unstructured_same_masks(amount):
    ws = [tie_free((6, 8), 1), tie_free((8, 5), 2), tie_free((5, 1), 3)]
    assert np.unique(np.abs(np.concatenate([w.ravel() for w in ws]))).size == 93
    layers = [linear_with(w) for w in ws]
    prune.global_unstructured([(layer, "weight") for layer in layers],
                              pruning_method=prune.L1Unstructured, amount=amount)
    ours = global_magnitude_masks(ws, amount)
    for layer, mask in zip(layers, ours):
        np.testing.assert_array_equal(mask, torch_mask(layer))


@pytest.mark.parametrize("n", [1, 2, np.inf])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("amount", AMOUNTS)
def test_ln_structured_output_neurons_same_mask(n, shape, amount):
    w = tie_free(shape, seed=7 + sum(shape))
    layer = linear_with(w)
    prune.ln_structured(layer, "weight", amount=amount, n=float(n), dim=0)
    expected = torch_mask(layer)
    ours = structured_mask(w, amount, norm=n, axis=-1)
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("amount", AMOUNTS)
def test_random_unstructured_same_count(shape, amount):
    layer = linear_with(tie_free(shape, seed=11))
    torch.manual_seed(0)
    prune.random_unstructured(layer, "weight", amount=amount)
    expected_pruned = int((~torch_mask(layer)).sum())
    ours = random_mask(shape, amount, seed=0)
    assert int((~ours).sum()) == expected_pruned
