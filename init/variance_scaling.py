"""Variance scaling and the named initializers built from it (Xavier/Glorot, He, LeCun, fan-in).

Every named initializer here is one call of :func:`variance_scaling`: the weights
are drawn with variance ``scale / n`` where n is fan_in, fan_out or their mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ._checks import check_dtype, check_key, check_non_negative, check_shape
from ._fans import compute_fans

Initializer = Callable[..., jax.Array]

MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("uniform", "normal", "truncated_normal")
# standard deviation of a standard normal truncated to [−2, 2]
TRUNCATED_STDDEV = 0.87962566103423978


def variance_scaling(scale: float, mode: str, distribution: str, in_axis: int = -2,
                     out_axis: int = -1, batch_axis: Sequence[int] = (),
                     *, name: str = "variance_scaling") -> Initializer:
    """Draws weights with variance ``scale / n``.

    n = fan_in, fan_out or (fan_in + fan_out) / 2 by ``mode`` (fans by
    :func:`init.compute_fans`). Distributions, all with variance σ² = scale / n:
    ``"uniform"``: U[−√(3σ²), √(3σ²)]; ``"normal"``: N(0, σ²);
    ``"truncated_normal"``: N(0, (σ / 0.8796)²) cut at ±2 of its standard deviations
    (the division restores variance σ² after the cut).

    Args:
      scale: the variance multiplier, ≥ 0.
      mode: "fan_in", "fan_out" or "fan_avg".
      distribution: "uniform", "normal" or "truncated_normal".
      in_axis, out_axis, batch_axis: which axes hold inputs, outputs and batches.

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
        >>> w = init.variance_scaling(2.0, "fan_in", "normal")(jax.random.key(0), (784, 256))
    """
    check_non_negative(name, "scale", scale)
    if mode not in MODES:
        raise ValueError(f"{name}: mode must be one of {', '.join(MODES)}; got {mode!r}.")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"{name}: distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}."
        )

    def initializer(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        check_key(name, key)
        shape = check_shape(name, shape)
        dtype = check_dtype(name, dtype)
        fan_in, fan_out = compute_fans(shape, in_axis, out_axis, batch_axis)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(1.0, n)
        # sample in float32 at least, then cast: bfloat16 sampling is too coarse
        sample_dtype = jnp.promote_types(dtype, jnp.float32)
        if distribution == "uniform":
            bound = jnp.sqrt(3 * jnp.asarray(variance, sample_dtype))
            x = jax.random.uniform(key, shape, sample_dtype, -bound, bound)
        elif distribution == "normal":
            x = jax.random.normal(key, shape, sample_dtype) * jnp.sqrt(
                jnp.asarray(variance, sample_dtype))
        else:
            stddev = jnp.sqrt(jnp.asarray(variance, sample_dtype)) / TRUNCATED_STDDEV
            x = jax.random.truncated_normal(key, -2, 2, shape, sample_dtype) * stddev
        return x.astype(dtype)

    return initializer


def xavier_uniform(gain: float = 1.0) -> Initializer:
    """Xavier/Glorot uniform (Glorot & Bengio 2010): U[−b, b], b = gain·√(6 / (n_in + n_out)).

    Variance gain²·2 / (n_in + n_out), keeping activations' and gradients'
    variances equal across tanh-like layers. ``gain`` as in ``torch.nn.init``.

    Example:
        >>> w = init.xavier_uniform()(jax.random.key(0), (256, 128))
    """
    return variance_scaling(gain**2, "fan_avg", "uniform", name="xavier_uniform")


def xavier_normal(gain: float = 1.0) -> Initializer:
    """Xavier/Glorot normal (Glorot & Bengio 2010): N(0, gain²·2 / (n_in + n_out)).

    Example:
        >>> w = init.xavier_normal()(jax.random.key(0), (256, 128))
    """
    return variance_scaling(gain**2, "fan_avg", "normal", name="xavier_normal")


def _he_scale(negative_slope: float) -> float:
    return 2.0 / (1.0 + negative_slope**2)


def he_uniform(negative_slope: float = 0.0, mode: str = "fan_in") -> Initializer:
    """He/Kaiming uniform (He et al. 2015): U[−b, b], b = √(6 / ((1 + a²) n)).

    Variance 2 / ((1 + a²) n) for ReLU (a = 0) or leaky ReLU/PReLU with slope a;
    n = fan_in (forward pass) or fan_out (backward pass).

    Example:
        >>> w = init.he_uniform()(jax.random.key(0), (784, 256))
    """
    return variance_scaling(_he_scale(negative_slope), mode, "uniform", name="he_uniform")


def he_normal(negative_slope: float = 0.0, mode: str = "fan_in") -> Initializer:
    """He/Kaiming normal (He et al. 2015): N(0, 2 / ((1 + a²) n)), the course notes'
    ``randn(n_in, n_out) · √(2 / n_in)`` for ReLU.

    Example:
        >>> w = init.he_normal()(jax.random.key(0), (784, 256))
    """
    return variance_scaling(_he_scale(negative_slope), mode, "normal", name="he_normal")


def lecun_uniform() -> Initializer:
    """LeCun uniform (LeCun et al. 1998, "Efficient BackProp"): U[−√(3 / n_in), √(3 / n_in)].

    Variance 1 / n_in.

    Example:
        >>> w = init.lecun_uniform()(jax.random.key(0), (64, 32))
    """
    return variance_scaling(1.0, "fan_in", "uniform", name="lecun_uniform")


def lecun_normal() -> Initializer:
    """LeCun normal (LeCun et al. 1998): N(0, 1 / n_in), the course notes' randn / √n.

    Example:
        >>> w = init.lecun_normal()(jax.random.key(0), (64, 32))
    """
    return variance_scaling(1.0, "fan_in", "normal", name="lecun_normal")


def fan_in_uniform() -> Initializer:
    """U(−1/√d, 1/√d) with d = fan_in (the course notes' rule; torch's default for Linear biases).

    Variance 1 / (3d).

    Example:
        >>> w = init.fan_in_uniform()(jax.random.key(0), (64, 32))   # |w| ≤ 1/8
    """
    return variance_scaling(1.0 / 3.0, "fan_in", "uniform", name="fan_in_uniform")


glorot_uniform = xavier_uniform
glorot_normal = xavier_normal
kaiming_uniform = he_uniform
kaiming_normal = he_normal
