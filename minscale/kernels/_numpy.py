"""Reference kernels in NumPy.

Every function here has a twin of the same name and signature in ``_numba.py``; the tests
check that the two agree. Kernels work in place on preallocated, contiguous arrays; argument
checking and allocation happen in the callers (``layers.py``, ``optim.py``).

Activation codes (``act``) are :data:`minscale.kernels.ACTIVATION_CODES`:
0 identity, 1 relu, 2 leaky_relu, 3 tanh, 4 sigmoid.
"""
from __future__ import annotations

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
