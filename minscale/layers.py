"""Dense layers and activations.

The formulas are small pure functions (:func:`dense_forward`, :func:`dense_backward` and the
activations with their derivatives); :class:`Dense` holds views into the model's flat
parameter, gradient and mask buffers and calls the fused kernels of the active backend.

Shapes: ``x (n, d_in)``, ``W (d_in, d_out)``, ``b (d_out,)``, ``z = a = (n, d_out)``.
"""
from __future__ import annotations

import math

import numpy as np

from . import kernels, regularizers
from .data import COUNT_MAX, check_int, plain

__all__ = [
    "ACTIVATIONS", "INITIALIZERS", "Dense",
    "dense_forward", "dense_backward",
    "identity", "relu", "leaky_relu", "tanh", "sigmoid",
    "activation_derivative", "glorot_uniform", "he_normal", "zeros",
]

ACTIVATIONS = tuple(kernels.ACTIVATION_CODES)


# --- formulas ------------------------------------------------------------------------------

def dense_forward(x, W, b=None, *, out=None):
    """Affine map of a batch: ``z = x @ W + b``.

    Parameters
    ----------
    x : ndarray, shape (n, d_in)
    W : ndarray, shape (d_in, d_out)
    b : ndarray, shape (d_out,), or None
    out : ndarray, shape (n, d_out), optional
        Written in place and returned (the dtype of ``x @ W``).

    Returns
    -------
    z : ndarray, shape (n, d_out), dtype of ``x @ W``
        The product first, then ``+ b`` per element (one rounding each).
    """
    z = np.matmul(x, W, out=out)
    if b is not None:
        z += b
    return z


def dense_backward(x, W, dz, *, dW=None, db=None, need_dx=True):
    """Gradients of a dense layer from dL/dz.

    Parameters
    ----------
    x : ndarray, shape (n, d_in)
        The layer input of the forward pass.
    W : ndarray, shape (d_in, d_out)
        The weights used in the forward pass.
    dz : ndarray, shape (n, d_out)
        dL/dz.
    dW : ndarray, shape (d_in, d_out), optional
        Written in place (e.g. a view into the model's gradient buffer).
    db : ndarray, shape (d_out,), optional
        Written in place.
    need_dx : bool, default True
        False skips ``dx`` (the first layer's input gradient is not used).

    Returns
    -------
    dx : ndarray, shape (n, d_in), or None
        ``dz @ W.T``
    dW : ndarray, shape (d_in, d_out)
        ``x.T @ dz``
    db : ndarray, shape (d_out,)
        ``dz.sum(axis=0)``

    Notes
    -----
    From z_ij = sum_k x_ik W_kj + b_j by the chain rule (e.g. Goodfellow et al. 2016, 6.5).
    """
    dW = np.matmul(x.T, dz, out=dW)
    db = np.sum(dz, axis=0, out=db)
    return (dz @ W.T if need_dx else None), dW, db


def identity(z):
    """a = z. Derivative 1."""
    return z.copy()


def relu(z):
    """a = max(z, 0). Derivative from the output: [a > 0] (0 at z = 0, as PyTorch)."""
    return np.maximum(z, 0)


def leaky_relu(z, alpha=0.01):
    """a = z if z > 0 else alpha * z, alpha > 0 (Maas et al. 2013; PyTorch default 0.01).

    Derivative from the output: 1 if a > 0 else alpha.
    """
    return np.where(z > 0, z, z * z.dtype.type(alpha))


def tanh(z):
    """a = tanh(z). Derivative from the output: 1 - a**2."""
    return np.tanh(z)


def sigmoid(z):
    """a = 1 / (1 + exp(-z)), computed without overflow. Derivative: a * (1 - a)."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


def activation_derivative(a, name, alpha=0.01):
    """da/dz of an activation, written in terms of its output ``a``.

    Parameters
    ----------
    a : ndarray
        Activation output.
    name : {"identity", "relu", "leaky_relu", "tanh", "sigmoid"}
    alpha : float
        leaky_relu slope.

    Returns
    -------
    ndarray shaped like `a`

    Raises
    ------
    ValueError
        Unknown `name`.
    """
    one = a.dtype.type(1)
    if name == "identity":
        return np.ones_like(a)
    if name == "relu":
        return (a > 0).astype(a.dtype)
    if name == "leaky_relu":
        return np.where(a > 0, one, a.dtype.type(alpha))
    if name == "tanh":
        return one - a * a
    if name == "sigmoid":
        return a * (one - a)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


# --- initializers --------------------------------------------------------------------------

def glorot_uniform(shape, rng, dtype="float64"):
    """U(-limit, limit) with limit = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010).

    Parameters
    ----------
    shape : tuple (d_in, d_out)
    rng : numpy.random.Generator
    dtype : dtype

    Returns
    -------
    ndarray of `shape` and `dtype`
    """
    fan_in, fan_out = shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def he_normal(shape, rng, dtype="float64"):
    """N(0, 2 / fan_in) (He et al. 2015). Keras truncates at 2 sigma; this does not.

    Parameters
    ----------
    shape : tuple (d_in, d_out)
    rng : numpy.random.Generator
    dtype : dtype

    Returns
    -------
    ndarray of `shape` and `dtype`
    """
    return (rng.standard_normal(size=shape) * math.sqrt(2.0 / shape[0])).astype(dtype)


def zeros(shape, rng=None, dtype="float64"):
    """All zeros (the default bias initializer). `rng` is ignored.

    Returns
    -------
    ndarray of `shape` and `dtype`
    """
    return np.zeros(shape, dtype=dtype)


INITIALIZERS = {"glorot_uniform": glorot_uniform, "he_normal": he_normal, "zeros": zeros}


# --- the layer -----------------------------------------------------------------------------

class Dense:
    """Fully connected layer ``a = act(x @ W + b)``, holding views into flat buffers.

    Parameters
    ----------
    units : int, > 0
        d_out.
    activation : {"identity", "relu", "leaky_relu", "tanh", "sigmoid"}, default "identity"
        ``"linear"`` and ``None`` mean identity.
    use_bias : bool, default True
    kernel_initializer, bias_initializer : str
        Names in :data:`INITIALIZERS`.
    alpha : float, default 0.01
        Negative slope for leaky_relu.
    kernel_regularizer : minscale.regularizers.L2, optional
        Keras semantics: the training loss gains ``l2 * sum(W**2)`` and the kernel's gradient
        ``2 * l2 * W`` (biases excluded); ``fit`` reports the loss with it, ``evaluate``
        without it.

    Attributes
    ----------
    W, b, dW, db : ndarray views (b, db are None without bias)
        Shapes (d_in, d_out) and (d_out,), views into the model's flat buffers.
    W_mask : ndarray of bool, shape (d_in, d_out)
        View into the model's mask buffer (True = kept).
    kernel_quantizer, output_quantizer : callable or None
        Quantization-aware training hooks: ``q(x, training) -> (x_q, grad_mask or None)``,
        a fake-quantizer whose straight-through gradient passes where ``grad_mask`` is True.

    Raises
    ------
    ValueError
        `units` not an integer in [1, :data:`minscale.data.COUNT_MAX`]; bad `activation`,
        initializer or `alpha`.
    TypeError
        `kernel_regularizer` neither None nor :class:`minscale.regularizers.L2`.
    """

    def __init__(self, units, activation="identity", use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", alpha=0.01,
                 kernel_regularizer=None):
        units = check_int("units", units, 1, COUNT_MAX)
        if activation in (None, "linear"):
            activation = "identity"
        if activation not in kernels.ACTIVATION_CODES:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        for arg, name in (("kernel_initializer", kernel_initializer),
                          ("bias_initializer", bias_initializer)):
            if name not in INITIALIZERS:
                raise ValueError(f"{arg} must be one of {tuple(INITIALIZERS)}, got {name!r}")
        if not (alpha > 0):
            raise ValueError(f"alpha must be > 0, got {plain(alpha)!r}")
        self.units = int(units)
        self.activation = activation
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.alpha = float(alpha)
        self.kernel_regularizer = regularizers.get(kernel_regularizer, "kernel_regularizer")
        self.input_dim = None
        self.W = self.b = self.dW = self.db = self.W_mask = self.b_mask = None
        self.kernel_quantizer = None
        self.output_quantizer = None
        self._x = self._a = self._W_used = self._kernel_pass = self._output_pass = None

    # layout ---------------------------------------------------------------------------------
    def n_params(self, input_dim):
        """Number of parameters for a given input width: d_in * d_out (+ d_out with bias)."""
        return input_dim * self.units + (self.units if self.use_bias else 0)

    def bind(self, params, grads, mask, offset, input_dim):
        """Point W, b, dW, db and the masks at slices of the flat buffers.

        Parameters
        ----------
        params, grads : ndarray, shape (P,)
        mask : ndarray of bool, shape (P,)
        offset : int
            Where this layer's block starts; W first (row-major), then b.
        input_dim : int

        Returns
        -------
        int
            The offset after this layer's block.
        """
        self.input_dim = int(input_dim)
        n_w = self.input_dim * self.units
        shape = (self.input_dim, self.units)
        self.W = params[offset:offset + n_w].reshape(shape)
        self.dW = grads[offset:offset + n_w].reshape(shape)
        self.W_mask = mask[offset:offset + n_w].reshape(shape)
        end = offset + n_w
        if self.use_bias:
            self.b = params[end:end + self.units]
            self.db = grads[end:end + self.units]
            self.b_mask = mask[end:end + self.units]
            end += self.units
        else:
            self.b = self.db = self.b_mask = None
        return end

    def initialize(self, rng):
        """Fill W and b from their initializers with `rng` (a numpy Generator)."""
        dtype = self.W.dtype
        self.W[...] = INITIALIZERS[self.kernel_initializer](self.W.shape, rng, dtype)
        if self.use_bias:
            self.b[...] = INITIALIZERS[self.bias_initializer](self.b.shape, rng, dtype)

    def get_config(self):
        """JSON-ready constructor arguments (``kernel_regularizer`` only when set)."""
        config = {"units": self.units, "activation": self.activation, "use_bias": self.use_bias,
                  "kernel_initializer": self.kernel_initializer,
                  "bias_initializer": self.bias_initializer, "alpha": self.alpha}
        if self.kernel_regularizer is not None:
            config["kernel_regularizer"] = regularizers.serialize(self.kernel_regularizer)
        return config

    def regularize(self):
        """Add the kernel regularizer's gradient to ``dW``; return its penalty (0.0 without).

        Returns
        -------
        float
            ``l2 * sum(W**2)``, the term the training loss gains.
        """
        if self.kernel_regularizer is None:
            return 0.0
        self.kernel_regularizer.gradient(self.W, out=self.dW)
        return self.kernel_regularizer(self.W)

    # compute --------------------------------------------------------------------------------
    def forward(self, x, training=False):
        """Forward pass, keeping what backward needs.

        Parameters
        ----------
        x : ndarray, shape (n, d_in), the model's dtype
        training : bool
            Passed to the quantizers (observers update only in training).

        Returns
        -------
        a : ndarray, shape (n, d_out)
        """
        W = self.W
        self._kernel_pass = None
        if self.kernel_quantizer is not None:
            W, self._kernel_pass = self.kernel_quantizer(W, training)
        z = dense_forward(x, W, self.b if self.use_bias else None)
        # the bias is in z already: the kernel applies the activation only
        a = kernels.bias_act(z, _EMPTY.get(z.dtype), kernels.ACTIVATION_CODES[self.activation],
                             self.alpha)
        self._a = a
        self._output_pass = None
        if self.output_quantizer is not None:
            a, self._output_pass = self.output_quantizer(a, training)
        self._x, self._W_used = x, W
        return a

    def backward(self, da, need_dx=True):
        """Backward pass: write dW, db into the flat gradient buffer, return dx.

        Parameters
        ----------
        da : ndarray, shape (n, d_out)
            dL/da; it is overwritten (used as scratch for dL/dz).
        need_dx : bool
            False for the first layer, whose dx nobody uses.

        Returns
        -------
        dx : ndarray, shape (n, d_in), or None
        """
        if self._output_pass is not None:
            da *= self._output_pass
        dz = kernels.act_backward(self._a, da, kernels.ACTIVATION_CODES[self.activation],
                                  self.alpha, da)
        dx, _, _ = dense_backward(self._x, self._W_used, dz, dW=self.dW,
                                  db=self.db if self.use_bias else None, need_dx=need_dx)
        if self._kernel_pass is not None:
            self.dW *= self._kernel_pass
        return dx

    def __repr__(self):
        return f"Dense({self.units}, activation={self.activation!r}, use_bias={self.use_bias})"


class _EmptyCache:
    """Zero-length bias arrays per dtype, so kernels always receive an array."""

    def __init__(self):
        self._cache = {}

    def get(self, dtype):
        dtype = np.dtype(dtype)
        if dtype not in self._cache:
            self._cache[dtype] = np.zeros(0, dtype=dtype)
        return self._cache[dtype]


_EMPTY = _EmptyCache()
