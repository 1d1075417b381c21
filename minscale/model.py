"""Sequential: a stack of Dense layers over ONE flat parameter buffer.

All parameters live in ``params`` (shape (P,)), all gradients in ``grads`` (same layout), and
all pruning masks in ``mask`` (bool, True = kept). Layer ``k`` owns the block
``[W_k (row-major, d_in*d_out), b_k (d_out)]``; layers hold views into the three buffers, so
global magnitude pruning is one selection over one array, an allreduce is one call, and
save/load and shared memory deal with one array each.
"""
from __future__ import annotations

import copy as _copy
import re

import numpy as np

from . import losses
from . import optim as _optim
from .data import COUNT_MAX, accuracy, check_array, check_int, check_nbytes, check_Xy
from .io import codecs
from .io.container import (
    ModelFileError,
    canonical_json,
    decode_state,
    encode_state,
    expected_param_count,
    manifest_array,
    manifest_field,
    plain,
)
from .layers import Dense

__all__ = ["Sequential", "check_X"]

_DTYPES = (np.dtype("float32"), np.dtype("float64"))


def check_X(X, input_dim=None, dtype="float64", name="X"):
    """Validate an input batch and convert it to the model's dtype.

    Parameters
    ----------
    X : array_like, shape (n, d_in) or (n,) for d_in = 1
    input_dim : int, optional
        Expected d_in.
    dtype : {"float32", "float64"}
    name : str
        Argument name used in messages.

    Returns
    -------
    ndarray, shape (n, d_in), C-contiguous, `dtype`

    Raises
    ------
    ValueError
        Non-numeric, empty, NaN/inf, wrong ndim (see :func:`minscale.data.check_array`) or
        wrong feature count, naming `name`.
    """
    arr = check_array(X, name, dtype=dtype)
    if input_dim is not None and arr.shape[1] != input_dim:
        raise ValueError(f"{name} has {arr.shape[1]} features, the model expects {input_dim}")
    return arr


class Sequential:
    """A feed-forward stack of :class:`~minscale.layers.Dense` layers.

    Parameters
    ----------
    layers : list of Dense
    input_dim : int, optional
        d_in; without it the model is built on first use from the data.
    seed : int, default 0
        Seeds the weight initializers (``numpy.random.default_rng(seed)``).
    dtype : {"float64", "float32"}, default "float64"

    Attributes
    ----------
    params, grads : ndarray, shape (P,), `dtype`
        The flat parameter and gradient buffers (views are held by the layers).
    mask : ndarray of bool, shape (P,)
        Pruning mask, True = kept; all True until pruned.
    prunable : ndarray of bool, shape (P,)
        True on weights, False on biases.
    optimizer, loss, reduction, metrics
        Set by :meth:`compile`.
    history : History or None
        Of the last :meth:`fit`.

    Raises
    ------
    ValueError
        No layers, a non-Dense layer, a bad dtype or input_dim; with `input_dim`, parameter
        buffers larger than the physical memory (see :meth:`build`), before any allocation.
    """

    def __init__(self, layers, input_dim=None, seed=0, dtype="float64"):
        layers = list(layers)
        if not layers:
            raise ValueError("layers must contain at least one Dense layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Dense):
                raise ValueError(f"layers[{i}] must be a Dense layer, got {type(layer).__name__}")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("layers must not contain the same Dense object twice")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.layers = layers
        self.seed = seed
        self.input_dim = None
        self.params = self.grads = self.mask = self.prunable = None
        self._gradbuf = None
        self.optimizer = None
        self.loss = "mse"
        self.reduction = "mean"
        self.metrics = []
        self.history = None
        self.state = {}  # extension state (pruning backups, quantization config, ...)
        if input_dim is not None:
            self.build(input_dim)

    # building -------------------------------------------------------------------------------
    @property
    def built(self):
        """Whether the flat buffers exist."""
        return self.params is not None

    def build(self, input_dim):
        """Allocate the flat buffers, bind the layers and initialize the weights.

        Parameters
        ----------
        input_dim : int, > 0

        Raises
        ------
        ValueError
            `input_dim` not an integer in [1, :data:`minscale.data.COUNT_MAX`]; buffers larger
            than :func:`minscale.data.memory_limit` (the physical memory): the message names
            the parameter count, the bytes needed and the limit, and nothing is allocated.
        """
        input_dim = check_int("input_dim", input_dim, 1, COUNT_MAX)
        sizes, d = [], input_dim
        for layer in self.layers:
            sizes.append(layer.n_params(d))
            d = layer.units
        total = int(sum(sizes))
        # Python ints, so no overflow: refused before numpy is asked for the memory
        check_nbytes(total * self.bytes_per_param() + self.dtype.itemsize,
                     f"{total:,} parameters (input_dim {input_dim}, units "
                     f"{[layer.units for layer in self.layers]}, {self.dtype.name}): their "
                     "parameter, gradient and mask buffers",
                     "use fewer or narrower layers")
        self.input_dim = input_dim
        # one extra slot after the gradients carries the batch loss through the same allreduce
        self._gradbuf = np.zeros(total + 1, dtype=self.dtype)
        self._bind(np.zeros(total, dtype=self.dtype), self._gradbuf[:total],
                   np.ones(total, dtype=bool))
        self.prunable = np.zeros(total, dtype=bool)
        for layer, (start, _stop) in zip(self.layers, self.layer_slices()):
            self.prunable[start:start + layer.W.size] = True
        rng = np.random.default_rng(self.seed)
        for layer in self.layers:
            layer.initialize(rng)
        return self

    def bytes_per_param(self):
        """Bytes of the flat buffers per parameter: params and grads (the dtype's size each),
        mask and prunable (one byte each). Optimizer state (Adam: 2 more per parameter)
        comes on top when training starts."""
        return 2 * self.dtype.itemsize + 2

    def _bind(self, params, grads, mask):
        self.params, self.grads, self.mask = params, grads, mask
        offset, d = 0, self.input_dim
        for layer in self.layers:
            offset = layer.bind(params, grads, mask, offset, d)
            d = layer.units

    def rebind(self, params=None, mask=None):
        """Point the layers at new flat buffers (e.g. shared memory), keeping the layout.

        Parameters
        ----------
        params : ndarray, shape (P,), the model's dtype, optional
        mask : ndarray of bool, shape (P,), optional

        Raises
        ------
        ValueError
            Shape or dtype that does not match the layout.
        """
        self._require_built()
        params = self.params if params is None else params
        mask = self.mask if mask is None else mask
        if params.shape != self.params.shape or params.dtype != self.dtype:
            raise ValueError(f"params must have shape {self.params.shape} and dtype "
                             f"{self.dtype}, got {params.shape} {params.dtype}")
        if mask.shape != self.mask.shape or mask.dtype != np.bool_:
            raise ValueError(f"mask must be a bool array of shape {self.mask.shape}, got "
                             f"{mask.shape} {mask.dtype}")
        self._bind(params, self.grads, mask)

    def layer_slices(self):
        """``(start, stop)`` of each layer's block in the flat buffers."""
        self._require_built()
        out, offset, d = [], 0, self.input_dim
        for layer in self.layers:
            n = layer.n_params(d)
            out.append((offset, offset + n))
            offset, d = offset + n, layer.units
        return out

    def _require_built(self):
        if not self.built:
            raise ValueError("the model is not built: give input_dim or call fit/predict first")

    def _ensure_built(self, X):
        if not self.built:
            self.build(X.shape[1])

    @property
    def output_dim(self):
        """d_out of the last layer."""
        return self.layers[-1].units

    def count_params(self):
        """P, the length of the flat parameter buffer."""
        self._require_built()
        return int(self.params.size)

    # compute --------------------------------------------------------------------------------
    def forward(self, X, training=False):
        """Forward pass of an already validated batch.

        Parameters
        ----------
        X : ndarray, shape (n, d_in), the model's dtype
        training : bool

        Returns
        -------
        ndarray, shape (n, d_out)
        """
        a = X
        for layer in self.layers:
            a = layer.forward(a, training)
        return a

    def backward(self, dy):
        """Backward pass from dL/dy_hat; overwrites ``grads`` (no accumulation).

        Parameters
        ----------
        dy : ndarray, shape (n, d_out)
            Overwritten (used as scratch).
        """
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            dy = self.layers[i].backward(dy, need_dx=i > 0)

    def compute_gradients(self, X, y, n_total=None, regularize=True):
        """Forward and backward on one batch; write dL/dtheta into ``grads``.

        Parameters
        ----------
        X : ndarray, shape (n, d_in), the model's dtype
        y : ndarray, shape (n, d_out), the model's dtype
        n_total : int, optional
            Rows of the whole batch when (X, y) is one shard of it (data-parallel): the
            ``mean`` reduction divides by it, so shard gradients add up to the batch gradient.
        regularize : bool, default True
            Add the layers' kernel regularizers (:meth:`regularize`). The data-parallel loop
            passes False and regularizes once after the allreduce, so the penalty is not
            counted once per shard.

        Returns
        -------
        float
            The loss of these rows in the compiled reduction (a part of the batch loss when
            `n_total` is given), plus the regularization penalty when `regularize`: this is
            the training loss ``fit`` reports; :meth:`evaluate` excludes the penalty.
        """
        y_hat = self.forward(X, training=True)
        loss = losses.mse(y, y_hat, self.reduction, n_total)
        self.backward(losses.mse_grad(y, y_hat, self.reduction, n_total))
        if regularize:
            loss += self.regularize()
        return loss

    def regularize(self):
        """Add every layer's kernel-regularizer gradient to ``grads``; return the penalty.

        Returns
        -------
        float
            ``sum over layers of l2 * sum(W**2)`` (0.0 when no layer is regularized).
        """
        return float(sum(layer.regularize() for layer in self.layers))

    def penalty(self):
        """The kernel regularizers' penalty ``sum over layers of l2 * sum(W**2)``, without
        touching ``grads`` (0.0 when no layer is regularized)."""
        return float(sum(layer.kernel_regularizer(layer.W) for layer in self.layers
                         if layer.kernel_regularizer is not None))

    @property
    def regularized(self):
        """Whether a layer has a kernel regularizer."""
        return any(layer.kernel_regularizer is not None for layer in self.layers)

    # Keras-shaped API -----------------------------------------------------------------------
    def compile(self, loss="mse", optimizer="adam", reduction="mean", metrics=None,
                learning_rate=None):
        """Choose loss, reduction, optimizer and metrics.

        Parameters
        ----------
        loss : {"mse"}
        optimizer : {"sgd", "momentum", "nesterov", "adam"} or optimizer instance
        reduction : {"mean", "sum", "half_sum"}, default "mean"
        metrics : list of {"accuracy"}, optional
            Accuracy is argmax agreement of predictions with one-hot targets.
        learning_rate : float or schedule, optional
            Used when `optimizer` is a name.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Unknown loss, reduction, optimizer or metric.
        """
        if loss not in ("mse", "mean_squared_error"):
            raise ValueError(f"loss must be 'mse', got {loss!r}")
        self.loss = "mse"
        self.reduction = losses.check_reduction(reduction)
        self.optimizer = _optim.get(optimizer, learning_rate)
        metrics = list(metrics or [])
        for m in metrics:
            if m != "accuracy":
                raise ValueError(f"metrics may contain only 'accuracy', got {m!r}")
        self.metrics = metrics
        return self

    def fit(self, X, y, epochs=1, batch_size=32, **kwargs):
        """Train; see :func:`minscale.train.fit` for every argument.

        Returns
        -------
        History
            Its ``loss`` includes the kernel regularizers' penalty (the training loss);
            :meth:`evaluate` and ``val_loss`` exclude it.
        """
        from .train import fit  # noqa: PLC0415 (the one documented upward call)
        return fit(self, X, y, epochs=epochs, batch_size=batch_size, **kwargs)

    def predict(self, X, batch_size=None):
        """Model outputs for `X`.

        Parameters
        ----------
        X : array_like, shape (n, d_in)
        batch_size : int, optional
            Rows per forward pass (all at once by default).

        Returns
        -------
        ndarray, shape (n, d_out), the model's dtype

        Raises
        ------
        ValueError
            Bad `X` or `batch_size` (see :func:`check_X`).
        """
        X = check_X(X, self.input_dim, self.dtype)
        self._ensure_built(X)
        n = X.shape[0]
        bs = _check_batch_size(batch_size, n)
        if bs >= n:
            return self.forward(X).copy()
        out = np.empty((n, self.output_dim), dtype=self.dtype)
        for start in range(0, n, bs):
            out[start:start + bs] = self.forward(X[start:start + bs])
        return out

    def evaluate(self, X, y, batch_size=None, return_dict=False):
        """Loss (and metrics) on a data set, weighting every sample equally.

        Parameters
        ----------
        X : array_like, shape (n, d_in)
        y : array_like, shape (n, d_out) or (n,)
        batch_size : int, optional
        return_dict : bool
            Return ``{"loss": ..., "accuracy": ...}`` instead of a float / list.

        Returns
        -------
        float, or [loss, *metrics] when compiled with metrics, or a dict
            The data loss only: kernel-regularizer penalties, which the training loss that
            ``fit`` reports includes, are excluded.

        Raises
        ------
        ValueError
            Bad data or shapes.
        """
        X, y = self._check_Xy(X, y)
        y_hat = self.predict(X, batch_size)
        result = {"loss": losses.mse(y, y_hat, self.reduction)}
        if "accuracy" in self.metrics:
            result["accuracy"] = float(accuracy(y, y_hat))
        if return_dict:
            return result
        return result["loss"] if len(result) == 1 else list(result.values())

    def _check_Xy(self, X, y):
        X, y = check_Xy(X, y, dtype=self.dtype)
        self._ensure_built(X)
        check_X(X, self.input_dim, self.dtype, "X")
        check_X(y, self.output_dim, self.dtype, "y")
        return X, y

    # inspection -----------------------------------------------------------------------------
    def sparsity(self):
        """Fraction of pruned (masked) weights, per layer and in total.

        Returns
        -------
        dict
            ``{"layers": [float per layer, over its weights W], "total": float over all
            prunable weights, "total_with_bias": float over all parameters}``. Sparsity counts
            masked entries (mask False), the fraction of zeros the mask enforces.
        """
        self._require_built()
        def zeros_fraction(mask):
            # count / size, not 1 - mean: exact for fractions like 29/96
            return float(np.count_nonzero(~mask) / mask.size)

        per_layer = [zeros_fraction(layer.W_mask) for layer in self.layers]
        return {"layers": per_layer, "total": zeros_fraction(self.mask[self.prunable]),
                "total_with_bias": zeros_fraction(self.mask)}

    def get_weights(self):
        """Copies of ``[W_0, b_0, W_1, b_1, ...]`` (no b for layers without bias)."""
        self._require_built()
        out = []
        for layer in self.layers:
            out.append(layer.W.copy())
            if layer.use_bias:
                out.append(layer.b.copy())
        return out

    def set_weights(self, weights):
        """Copy arrays in :meth:`get_weights` order into the flat buffer.

        Raises
        ------
        ValueError
            Wrong count or shapes.
        """
        self._require_built()
        targets = []
        for layer in self.layers:
            targets.append(layer.W)
            if layer.use_bias:
                targets.append(layer.b)
        if len(weights) != len(targets):
            raise ValueError(f"weights must have {len(targets)} arrays, got {len(weights)}")
        for i, (t, w) in enumerate(zip(targets, weights)):
            w = np.asarray(w)
            if w.shape != t.shape:
                raise ValueError(f"weights[{i}] must have shape {t.shape}, got {w.shape}")
            t[...] = w

    def get_config(self):
        """JSON-ready architecture: input_dim, dtype, seed and each layer's config."""
        return {"input_dim": self.input_dim, "dtype": self.dtype.name, "seed": self.seed,
                "layers": [layer.get_config() for layer in self.layers]}

    @classmethod
    def from_config(cls, config):
        """Build an (initialized) model from :meth:`get_config`'s output."""
        layers = [Dense(**lc) for lc in config["layers"]]
        return cls(layers, input_dim=config["input_dim"], seed=config.get("seed", 0),
                   dtype=config["dtype"])

    def copy(self):
        """Deep copy: new buffers, same values, masks, compile settings and fresh optimizer
        state (iterations 0)."""
        new = Sequential.from_config(self.get_config()) if self.built else \
            Sequential([Dense(**layer.get_config()) for layer in self.layers], seed=self.seed,
                       dtype=self.dtype)
        if self.built:
            new.params[...] = self.params
            new.mask[...] = self.mask
        new.reduction, new.metrics = self.reduction, list(self.metrics)
        if self.optimizer is not None:
            new.optimizer = _optim.deserialize(self.optimizer.get_config()) \
                if _serializable(self.optimizer) else _copy.deepcopy(self.optimizer)
            new.optimizer.reset()
        new.state = _copy.deepcopy(self.state)
        return new

    def summary(self):
        """A printable table of layers, shapes, parameter counts and sparsity."""
        self._require_built()
        lines = [f"Sequential (dtype {self.dtype.name}, input_dim {self.input_dim})",
                 f"{'layer':<8}{'W shape':<14}{'activation':<12}{'params':>10}{'sparsity':>10}"]
        sp = self.sparsity()["layers"]
        for i, (layer, (a, b)) in enumerate(zip(self.layers, self.layer_slices())):
            lines.append(f"{i:<8}{str(layer.W.shape):<14}{layer.activation:<12}{b - a:>10}"
                         f"{sp[i]:>10.3f}")
        lines.append(f"total params: {self.count_params()}")
        return "\n".join(lines)

    # model files (the "Sequential" codec of minscale.io) -------------------------------------
    def layer_table(self):
        """Per-layer rows for ``minscale info`` (the keys of :func:`minscale.io.layer_table`).

        Returns
        -------
        list of dict
            ``index``, ``W_shape``, ``b_shape`` (or None), ``activation``, ``n_params``,
            ``sparsity`` (masked fraction of W), ``bits`` (itemsize * 8) and ``nbytes``
            (``n_params * itemsize``; masks not counted).
        """
        self._require_built()
        rows = []
        sparsity = self.sparsity()["layers"]
        for i, (layer, (a, b)) in enumerate(zip(self.layers, self.layer_slices())):
            rows.append({"index": i, "W_shape": tuple(layer.W.shape),
                         "b_shape": None if layer.b is None else tuple(layer.b.shape),
                         "activation": layer.activation, "n_params": b - a,
                         "sparsity": sparsity[i], "bits": self.dtype.itemsize * 8,
                         "nbytes": (b - a) * self.dtype.itemsize})
        return rows

    def to_payload(self):
        """Manifest fields and arrays of a model file (see :mod:`minscale.io`).

        Returns
        -------
        fields : dict
            JSON-ready: ``config``, ``dtype``, ``compile``, ``optimizer`` (class, config or
            None when it cannot be serialized, iterations, buffer names), ``state`` (arrays
            replaced by references), ``summary`` and ``qat_observers`` (filled by the ``qat``
            extension when layers carry QAT observers, else None).
        arrays : dict of str -> ndarray
            ``params`` (P,), ``mask`` (P,) bool, ``optimizer/<name>`` (P,), ``state/<i>``.

        Raises
        ------
        ValueError
            The model is not built, or an optimizer buffer name cannot be stored.
        TypeError
            ``model.state`` holds something a file cannot store (naming where).
        """
        if not self.built:
            raise ValueError("model is not built: give input_dim or train it before saving")
        arrays = {"params": self.params, "mask": self.mask}
        fields = {
            "config": plain(self.get_config()),
            "dtype": self.dtype.name,
            "compile": {"loss": self.loss, "reduction": self.reduction,
                        "metrics": list(self.metrics)},
            "optimizer": _optimizer_payload(self.optimizer, arrays),
            "state": encode_state(self.state, arrays),
            "summary": {"n_params": self.count_params(), "sparsity": self.sparsity()},
            "qat_observers": None,
        }
        if "quantization" in self.state or any(
                getattr(layer.output_quantizer, "observer", None) is not None
                for layer in self.layers):
            codecs.lookup_extension("qat").encode(self, fields, arrays)
        return fields, arrays

    @classmethod
    def from_payload(cls, manifest, arrays, path=None, optimizer_state=False):
        """Build a model from a verified manifest and its arrays (the inverse of
        :meth:`to_payload`).

        Parameters
        ----------
        manifest : dict
        arrays : dict of str -> ndarray
        path : str, optional
            The file, named in error messages.
        optimizer_state : bool, default False
            Also return the stored optimizer state ``{"class", "config", "iterations",
            "arrays"}`` (or None), which a checkpoint needs even when the optimizer could not
            be rebuilt from its config (a custom schedule: ``model.optimizer`` is then None).

        Returns
        -------
        Sequential, or (Sequential, dict or None)

        Raises
        ------
        minscale.io.ModelFileError
            Fields or arrays that do not describe a valid model (naming the field).
        """
        config = manifest_field(manifest, "config", dict, "manifest")
        dtype = manifest_field(manifest, "dtype", str, "manifest")
        if dtype not in ("float32", "float64") or config.get("dtype") != dtype:
            raise ModelFileError(f"{path!r}: dtype {dtype!r} (config says "
                                 f"{config.get('dtype')!r}); expected 'float32' or 'float64'")
        try:
            n_params = expected_param_count(config)
        except ValueError as exc:
            raise ModelFileError(f"{path!r}: bad architecture: {exc}") from None
        params = manifest_array(arrays, "params", (n_params,), dtype, path)
        mask = manifest_array(arrays, "mask", (n_params,), np.bool_, path)
        for i, lc in enumerate(config["layers"]):
            allowed = {"units", "activation", "use_bias", "kernel_initializer",
                       "bias_initializer", "alpha", "kernel_regularizer"}
            if set(lc) - allowed:
                raise ModelFileError(f"{path!r}: config['layers'][{i}] has unknown fields "
                                     f"{sorted(set(lc) - allowed)}")
        seed = config.get("seed", 0)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ModelFileError(f"{path!r}: config['seed'] must be a non-negative int or "
                                 f"null, got {seed!r}")
        try:
            model = cls.from_config(config)
        except (ValueError, TypeError) as exc:
            raise ModelFileError(f"{path!r}: bad architecture: {exc}") from None
        model.params[...] = params
        model.mask[...] = mask
        compiled = manifest_field(manifest, "compile", dict, "manifest")
        reduction = manifest_field(compiled, "reduction", str, "manifest['compile']")
        metrics = manifest_field(compiled, "metrics", list, "manifest['compile']")
        loss = manifest_field(compiled, "loss", str, "manifest['compile']")
        opt = manifest.get("optimizer")
        opt_state = _optimizer_state(opt, arrays, n_params, dtype, path)
        optimizer = "adam"
        if opt_state is not None and opt_state["config"] is not None:
            optimizer = _optim.deserialize(opt_state["config"])
        try:
            model.compile(loss=loss, optimizer=optimizer, reduction=reduction, metrics=metrics)
        except (ValueError, TypeError) as exc:
            raise ModelFileError(f"{path!r}: bad compile settings: {exc}") from None
        if opt is None or opt.get("config") is None:
            # never compiled, or its class could not be rebuilt from the file
            model.optimizer = None
        if opt_state is not None and model.optimizer is not None:
            model.set_optimizer_state(opt_state)
        state = decode_state(manifest.get("state", {}), arrays)
        if not isinstance(state, dict):
            raise ModelFileError(f"{path!r}: manifest['state'] must be an object")
        model.state = state
        if "quantization" in state:
            codecs.lookup_extension("qat").decode(model, manifest, arrays, path)
        return (model, opt_state) if optimizer_state else model

    def set_optimizer_state(self, opt_state):
        """Put a stored optimizer state (:meth:`from_payload`'s) into ``self.optimizer``.

        Parameters
        ----------
        opt_state : dict
            ``{"iterations": int, "arrays": {name: ndarray (P,)}, ...}``; the buffers are
            converted to the model's dtype.
        """
        self.optimizer.set_state(opt_state["iterations"],
                                 {name: np.asarray(arr, dtype=self.params.dtype)
                                  for name, arr in opt_state["arrays"].items()})

    def __repr__(self):
        return f"Sequential({self.layers!r}, input_dim={self.input_dim}, dtype={self.dtype.name!r})"

    @property
    def grad_buffer(self):
        """The flat gradient buffer, shape (P + 1,), the model's dtype.

        ``grad_buffer[:P]`` is ``grads`` (every layer's dW and db are views into it) and
        ``grad_buffer[P]`` holds the batch loss, so one allreduce of this buffer sums the shard
        gradients and the shard losses together (DESIGN.md, data-parallel training). None
        before the model is built.
        """
        return self._gradbuf

    def relink(self):
        """Re-create the view structure after unpickling: fresh gradient buffer, layers rebound.

        Pickling copies every view (``layer.W``, ``model.grads``, ...) into an array of its
        own, so an unpickled Sequential's layers no longer write into :attr:`grad_buffer`, the
        buffer the training loop allreduces. This restores ``grads = grad_buffer[:P]`` (zeros)
        and rebinds every layer to ``params``, ``grads`` and ``mask``.

        Returns
        -------
        Sequential
            self.

        Raises
        ------
        ValueError
            If the model is not built.
        """
        if getattr(self, "params", None) is None:
            raise ValueError("model must be built (give input_dim or fit it once) before it is "
                             "sent to workers")
        n_params = self.params.size
        self._gradbuf = np.zeros(n_params + 1, dtype=self.dtype)
        self.grads = self._gradbuf[:n_params]
        self.rebind(params=self.params, mask=self.mask)
        return self


def _serializable(optimizer):
    try:
        optimizer.get_config()
        return True
    except TypeError:
        return False


def _optimizer_payload(optimizer, arrays):
    """The manifest's ``optimizer`` field; its buffers go into `arrays` as ``optimizer/<name>``."""
    if optimizer is None:
        return None
    try:
        config = plain(_optim.serialize(optimizer))
        canonical_json(config)
    except (TypeError, ValueError, AttributeError):
        config = None  # e.g. a custom schedule: the state is kept, the config cannot be
    buffers = optimizer.state_arrays() if hasattr(optimizer, "state_arrays") else {}
    for name, buf in sorted(buffers.items()):
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"optimizer buffer name {name!r} cannot be stored")
        arrays[f"optimizer/{name}"] = np.ascontiguousarray(buf)
    return {"class": type(optimizer).__name__, "config": config,
            "iterations": int(getattr(optimizer, "iterations", 0)), "arrays": sorted(buffers)}


def _optimizer_state(opt, arrays, n_params, dtype, path):
    """The stored optimizer state of a manifest's ``optimizer`` field, checked (None: none)."""
    if opt is None:
        return None
    if not isinstance(opt, dict):
        raise ModelFileError(f"{path!r}: manifest['optimizer'] must be an object or null")
    iterations = manifest_field(opt, "iterations", int, "manifest['optimizer']")
    names = manifest_field(opt, "arrays", list, "manifest['optimizer']")
    opt_class = manifest_field(opt, "class", str, "manifest['optimizer']")
    if iterations < 0 or not all(isinstance(n, str) for n in names):
        raise ModelFileError(f"{path!r}: bad optimizer state {opt!r}")
    buffers = {n: manifest_array(arrays, f"optimizer/{n}", (n_params,), dtype, path)
               for n in names}
    return {"class": opt_class, "config": opt.get("config"), "iterations": iterations,
            "arrays": buffers}


def _check_batch_size(batch_size, n):
    if batch_size is None:
        return n
    return check_int("batch_size", batch_size, 1, COUNT_MAX)


def _decode(manifest, arrays, path):
    return Sequential.from_payload(manifest, arrays, path)


codecs.register("Sequential", Sequential.to_payload, _decode, Sequential.layer_table)
