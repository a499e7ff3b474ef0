"""Dense, Flatten, Dropout and the activation layers."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import init as initializers

from .. import activations
from .base import (
    Layer,
    ParamsError,
    check_float_dtype,
    check_input_shape,
    expect_keys,
    expect_shape,
    hyperparameter,
    initializer,
    input_array,
    named,
    positive_int,
)


def Dense(features: int, w_init: Callable | None = None,
          b_init: Callable | None = None) -> Layer:  # noqa: N802 - layers are CamelCase
    """Fully connected layer: y = x W + b over the last axis.

    Args:
      features: the number of outputs.
      w_init: initializer ``(key, shape, dtype) -> array`` of ``w`` (in, features);
        default ``init.xavier_uniform()``.
      b_init: initializer of ``b`` (features,); default ``init.zeros()``.

    Returns:
      A :class:`Layer` with params ``{"w", "b"}`` and no state.

    Example:
        >>> out_shape, params, state = fnn.Dense(10).init(key, (-1, 64))   # (-1, 10)
    """
    features = positive_int("Dense", "features", features)
    w_init = initializer("Dense", "w_init", w_init, initializers.xavier_uniform())
    b_init = initializer("Dense", "b_init", b_init, initializers.zeros())
    name = f"Dense({features})"

    def init(key, input_shape, dtype=jnp.float32):
        shape = check_input_shape(name, input_shape, min_rank=2,
                                  expected="(batch, ..., features)")
        dtype = check_float_dtype(name, dtype)
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, (shape[-1], features), dtype),
                  "b": b_init(k_b, (features,), dtype)}
        return (*shape[:-1], features), params, {}

    def apply(params, state, x, *, key=None, train=False):
        expect_keys(name, params, ("w", "b"))
        x = input_array(name, x, min_rank=1)
        expect_shape(name, "w", params["w"], (x.shape[-1], features), x=x)
        expect_shape(name, "b", params["b"], (features,))
        return x @ params["w"] + params["b"], state

    return named(init, apply, "dense", name)


def Flatten() -> Layer:  # noqa: N802
    """Flattens every axis but the batch axis: (B, d1, d2, …) → (B, d1·d2·…).

    Example:
        >>> fnn.Flatten().init(key, (-1, 8, 8, 3))[0]   # (-1, 192)
    """

    def init(key, input_shape, dtype=jnp.float32):
        shape = check_input_shape("Flatten", input_shape, min_rank=2,
                                  expected="(batch, d1, ...)")
        size = 1
        for d in shape[1:]:
            size *= d
        return (shape[0], size), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        x = input_array("Flatten", x)
        if x.ndim < 2:
            raise ValueError(f"Flatten: expected an input (batch, d1, ...); got shape {x.shape}.")
        return x.reshape(x.shape[0], -1), state

    return named(init, apply, "flatten", "Flatten")


def Dropout(rate: float) -> Layer:  # noqa: N802
    """Inverted dropout: in training, y = x·m / (1 − rate) with m ~ Bernoulli(1 − rate).

    The expected value of y is x, so evaluation (``train=False``) is the
    identity and needs no key. Training needs a key:
    ``model.apply(params, state, x, key=key, train=True)``.

    Args:
      rate: the probability of dropping a unit, in [0, 1) (the source texts'
        keep probability p is 1 − rate).

    Returns:
      A parameter-free, stateless :class:`Layer`.

    Example:
        >>> y, _ = fnn.Dropout(0.5).apply({}, {}, x, key=jax.random.key(0), train=True)
    """
    rate = hyperparameter("Dropout", "rate (the drop probability)", rate, 0.0, 1.0,
                          high_open=True)
    traced = isinstance(rate, jax.core.Tracer)  # built inside jit/vmap: NaN if out of range
    name = "Dropout(traced rate)" if traced else f"Dropout({rate:g})"

    def init(key, input_shape, dtype=jnp.float32):
        return check_input_shape(name, input_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if not train or (not traced and rate == 0.0):
            return x, state
        if key is None:
            raise ValueError(
                f"{name} needs a PRNG key in training: pass one to apply, e.g. "
                "model.apply(params, state, x, key=jax.random.key(0), train=True) "
                "(use a new key every step, e.g. jax.random.fold_in(key, step)).")
        x = input_array(name, x)
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        # the kept units times 1 / (1 − rate): a NaN rate (traced, out of range) gives NaN
        dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)
        scale = jnp.asarray(1.0 / (1.0 - rate), dtype)
        return jnp.where(keep, x, jnp.zeros_like(x)) * scale, state

    return named(init, apply, "dropout", name)


def Activation(fn: Callable[[jax.Array], jax.Array], name: str | None = None) -> Layer:  # noqa: N802
    """A parameter-free layer applying ``fn``: y = fn(x).

    Every activation layer (``Relu()``, ``Tanh()``, …) is one of these.

    Args:
      fn: an array function (elementwise, or along the last axis like softmax).
      name: the layer's name in its parent's params (default: ``fn.__name__``).

    Returns:
      A parameter-free, stateless :class:`Layer`.

    Example:
        >>> swish = fnn.Activation(lambda x: x * jax.nn.sigmoid(x), "swish")
    """
    if not callable(fn) or isinstance(fn, Layer):
        hint = " (a layer is not an array function; use the layer itself)" \
            if isinstance(fn, Layer) else ""
        raise TypeError(f"Activation: fn must be a function of an array{hint}; got {fn!r}.")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"Activation: name must be a non-empty str; got {name!r}.")
    label = name or getattr(fn, "__name__", "activation")

    def init(key, input_shape, dtype=jnp.float32):
        return check_input_shape(label, input_shape, min_rank=0), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if params not in ({}, None):
            raise ParamsError("", f"{label} has no params; got {params!r}.")
        return fn(x), state

    return named(init, apply, label.lower().replace("_", ""), label)


def Sigmoid() -> Layer:  # noqa: N802
    """σ(x) = 1 / (1 + e^{−x}). Example: ``fnn.Sigmoid()``."""
    return Activation(activations.sigmoid, "sigmoid")


def Tanh() -> Layer:  # noqa: N802
    """tanh(x). Example: ``fnn.Tanh()``."""
    return Activation(activations.tanh, "tanh")


def HardTanh() -> Layer:  # noqa: N802
    """max(−1, min(1, x)). Example: ``fnn.HardTanh()``."""
    return Activation(activations.hard_tanh, "hard_tanh")


def SoftSign() -> Layer:  # noqa: N802
    """x / (1 + |x|). Example: ``fnn.SoftSign()``."""
    return Activation(activations.soft_sign, "soft_sign")


def Relu() -> Layer:  # noqa: N802
    """max(0, x). Example: ``fnn.Relu()``."""
    return Activation(activations.relu, "relu")


def LeakyRelu(negative_slope: float = 0.01) -> Layer:  # noqa: N802
    """x for x ≥ 0, a·x otherwise (a = negative_slope, finite). Example: ``fnn.LeakyRelu(0.1)``."""
    negative_slope = hyperparameter("LeakyRelu", "negative_slope", negative_slope)
    return Activation(lambda x: activations.leaky_relu(x, negative_slope), "leaky_relu")


def Elu(alpha: float = 1.0) -> Layer:  # noqa: N802
    """x for x > 0, α(e^x − 1) otherwise (α = alpha, a finite number). Example: ``fnn.Elu()``."""
    alpha = hyperparameter("Elu", "alpha", alpha)
    return Activation(lambda x: activations.elu(x, alpha), "elu")


def Gelu(approximate: bool = True) -> Layer:  # noqa: N802
    """x Φ(x) (``approximate``: the tanh form, a bool). Example: ``fnn.Gelu()``."""
    if not isinstance(approximate, (bool, np.bool_)):
        raise TypeError(f"Gelu: approximate must be a bool; got {approximate!r}.")
    approximate = bool(approximate)
    return Activation(lambda x: activations.gelu(x, approximate), "gelu")


def _axis(owner: str, axis) -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{owner}: axis must be an int; got {axis!r}.")
    return int(axis)


def Softmax(axis: int = -1) -> Layer:  # noqa: N802
    """e^{x_i} / Σ_j e^{x_j} over ``axis`` (an int). Example: ``fnn.Softmax()``."""
    axis = _axis("Softmax", axis)
    return Activation(lambda x: activations.softmax(x, axis), "softmax")


def LogSoftmax(axis: int = -1) -> Layer:  # noqa: N802
    """x_i − log Σ_j e^{x_j} over ``axis`` (an int). Example: ``fnn.LogSoftmax()``."""
    axis = _axis("LogSoftmax", axis)
    return Activation(lambda x: activations.log_softmax(x, axis), "log_softmax")


__all__ = ["Activation", "Dense", "Dropout", "Elu", "Flatten", "Gelu", "HardTanh", "LeakyRelu",
           "LogSoftmax", "Relu", "Sigmoid", "SoftSign", "Softmax", "Tanh"]
