"""prune(model, [s_0, s_1, ...]): one sparsity per layer (Han et al. 2015's layer-wise rates)."""
import numpy as np
import pytest

import minscale as ms
from minscale import prune as P


def _net(seed=0):
    return ms.Sequential([ms.Dense(12, "relu"), ms.Dense(8, "relu"), ms.Dense(3)],
                         input_dim=10, seed=seed)


def test_each_layer_gets_exactly_its_own_count_of_smallest_weights():
    net = _net()
    before = [layer.W.copy() for layer in net.layers]
    P.prune(net, [0.92, 0.91, 0.74])
    # W sizes 120, 96, 24: round(0.92 * 120) = 110, round(0.91 * 96) = 87, round(0.74 * 24) = 18
    assert [int((~layer.W_mask).sum()) for layer in net.layers] == [110, 87, 18]
    for layer, w in zip(net.layers, before):
        kept, gone = np.abs(w[layer.W_mask]), np.abs(w[~layer.W_mask])
        assert kept.min() >= gone.max()                      # magnitude rule within the layer
        assert (layer.W[~layer.W_mask] == 0).all()
        np.testing.assert_array_equal(layer.W[layer.W_mask], w[layer.W_mask])
    assert all(layer.b_mask.all() for layer in net.layers)   # biases untouched


def test_per_layer_equals_pruning_each_layer_alone():
    a, b = _net(3), _net(3)
    P.prune(a, [0.5, 0.25, 0.0])
    for layer, s in zip(b.layers, (0.5, 0.25, 0.0)):
        layer.W_mask[...] = P.magnitude_mask(layer.W, s)
    np.testing.assert_array_equal(a.mask, b.mask)


def test_rounds_are_nested_and_random_counts_are_exact():
    net = _net(1)
    P.prune(net, [0.3, 0.2, 0.1])
    first = net.mask.copy()
    P.prune(net, [0.6, 0.5, 0.2])
    assert not (net.mask & ~first).any()                     # no weight comes back
    assert [int((~layer.W_mask).sum()) for layer in net.layers] == [72, 48, 5]
    rnd = _net(1)
    P.prune(rnd, [0.5, 0.0, 1.0], method="random", include_bias=True, seed=4)
    assert [int((~layer.W_mask).sum()) for layer in rnd.layers] == [60, 0, 24]
    assert [int((~layer.b_mask).sum()) for layer in rnd.layers] == [6, 0, 3]


def test_per_layer_errors():
    net = _net()
    with pytest.raises(ValueError, match="one value per layer: the model has 3 layers, got 2"):
        P.prune(net, [0.5, 0.5])
    with pytest.raises(ValueError, match="needs method 'magnitude' or 'random'"):
        P.prune(net, [0.5, 0.5, 0.5], method="global")
    with pytest.raises(ValueError, match=r"sparsity\[1\] must be in \[0, 1\]"):
        P.prune(net, [0.5, 90, 0.5])
    assert net.mask.all()                                    # nothing changed on refusal
