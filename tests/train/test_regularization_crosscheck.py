"""Cross-checks of weight decay against PyTorch (skipped when torch is absent; `make crosscheck`).

Peer: ``torch.optim.SGD(momentum, weight_decay)``, ``torch.optim.Adam(weight_decay)`` and
``torch.optim.AdamW`` (checked against torch 2.13.0+cpu): 20 full-batch float64 steps of a
small tanh MLP from the same initial weights, on mean-squared error, must end at the same
parameters and optimizer state to rtol 1e-12. Also Keras-style L2 against torch with the penalty
``l2 * sum(W**2)`` added to the loss by hand.
"""
import numpy as np
import pytest

import minscale as ms
from minscale.optim import SGD, Adam, AdamW

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.crosscheck

STEPS = 20
RTOL = 1e-12


def data():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(16, 3))
    y = np.sin(X @ rng.normal(size=(3, 2)))
    return X, y


def models(optimizer, l2=None):
    reg = None if l2 is None else ms.regularizers.L2(l2)
    model = ms.Sequential([ms.Dense(5, "tanh", kernel_regularizer=reg),
                           ms.Dense(2, kernel_regularizer=reg)], input_dim=3, seed=4)
    model.params[...] += 0.1  # nonzero biases, so the bias decay matters
    model.compile(optimizer=optimizer)
    W1, b1, W2, b2 = model.get_weights()
    # torch.nn.Linear keeps weight as (out, in); y = x @ weight.T + bias
    tparams = [torch.tensor(a.T.copy() if a.ndim == 2 else a.copy(), dtype=torch.float64,
                            requires_grad=True) for a in (W1, b1, W2, b2)]
    return model, tparams


def torch_run(tparams, make_opt, X, y, l2=None):
    opt = make_opt(tparams)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    W1, b1, W2, b2 = tparams
    for _ in range(STEPS):
        opt.zero_grad()
        out = torch.tanh(Xt @ W1.T + b1) @ W2.T + b2
        loss = torch.mean((out - yt) ** 2)
        if l2 is not None:
            loss = loss + l2 * (torch.sum(W1 ** 2) + torch.sum(W2 ** 2))
        loss.backward()
        opt.step()
    return opt


def flat(tparams):
    W1, b1, W2, b2 = (t.detach().numpy() for t in tparams)
    return np.concatenate([W1.T.ravel(), b1, W2.T.ravel(), b2])


def flat_state(opt, tparams, key):
    parts = [opt.state[t][key].numpy() for t in tparams]
    W1, b1, W2, b2 = parts
    return np.concatenate([W1.T.ravel(), b1, W2.T.ravel(), b2])


CASES = {
    "sgd_momentum_wd": (lambda: SGD(0.05, momentum=0.9, weight_decay=0.03),
                        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.03),
                        {"velocity": "momentum_buffer"}, None),
    "sgd_nesterov_wd": (lambda: SGD(0.05, momentum=0.8, nesterov=True, weight_decay=0.03),
                        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True,
                                                  weight_decay=0.03),
                        {"velocity": "momentum_buffer"}, None),
    "adam_wd": (lambda: Adam(0.01, weight_decay=0.05),
                lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.05),
                {"m": "exp_avg", "v": "exp_avg_sq"}, None),
    "adamw": (lambda: AdamW(0.01, weight_decay=0.1),
              lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
              {"m": "exp_avg", "v": "exp_avg_sq"}, None),
    "l2_sgd_momentum": (lambda: SGD(0.05, momentum=0.9),
                        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                        {"velocity": "momentum_buffer"}, 0.02),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fast", [False, True])
def test_20_full_batch_steps_equal_torch(case, fast):
    ours_opt, theirs_opt, state_names, l2 = CASES[case]
    X, y = data()
    model, tparams = models(ours_opt(), l2)
    callbacks = None if fast else [ms.train.Callback()]
    model.fit(X, y, epochs=STEPS, batch_size=len(X), shuffle=False, callbacks=callbacks)
    opt = torch_run(tparams, theirs_opt, X, y, l2)
    theirs = flat(tparams)
    np.testing.assert_allclose(model.params, theirs, rtol=RTOL, atol=1e-15)
    for ours_name, theirs_name in state_names.items():
        np.testing.assert_allclose(model.optimizer.state_arrays()[ours_name],
                                   flat_state(opt, tparams, theirs_name), rtol=RTOL, atol=1e-15)
    # and the decay really acted: torch without it ends elsewhere
    _, plain_params = models(ours_opt())
    torch_run(plain_params, lambda p: type(theirs_opt(p))(p, lr=0.01), X, y)
    assert np.max(np.abs(flat(plain_params) - theirs)) > 1e-6
