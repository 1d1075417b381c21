"""Trained models and data shared by the model-level quant tests (imported by name).
"""

import numpy as np

import minscale as ms
from minscale.data import one_hot, standardize, train_test_split
from minscale.datasets import load_diabetes, load_digits


def digits_data():
    X, y = load_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0)
    X_tr, X_te, _ = standardize(X_tr, X_te)
    return X_tr, X_te, one_hot(y_tr, 10), one_hot(y_te, 10)


def diabetes_data():
    X, y = load_diabetes()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0)
    X_tr, X_te, _ = standardize(X_tr, X_te)
    y_tr, y_te, _ = standardize(y_tr.reshape(-1, 1), y_te.reshape(-1, 1))
    return X_tr, X_te, y_tr, y_te


def mlp(d_in, hidden, d_out, seed, lr=1e-3, classification=False):
    layers = [ms.Dense(h, activation="relu", kernel_initializer="he_normal") for h in hidden]
    model = ms.Sequential(layers + [ms.Dense(d_out)], input_dim=d_in, seed=seed)
    model.compile(optimizer=ms.optim.Adam(lr), metrics=["accuracy"] if classification else None)
    return model


def train_digits():
    """A 64-64-10 ReLU MLP trained 40 epochs on digits; (model, X_tr, X_te, y_tr, y_te)."""
    X_tr, X_te, y_tr, y_te = digits_data()
    model = mlp(64, [64], 10, seed=0, classification=True)
    model.fit(X_tr, y_tr, epochs=40, batch_size=32, seed=0)
    return model, X_tr, X_te, y_tr, y_te


def tiny(seed=0):
    model = ms.Sequential([ms.Dense(3, activation="relu"), ms.Dense(1)], input_dim=2, seed=seed)
    X = np.random.default_rng(seed).normal(size=(64, 2))
    return model, X
