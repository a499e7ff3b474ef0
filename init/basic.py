"""Constant and plain random initializers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ._checks import check_dtype, check_key, check_non_negative, check_shape
from .variance_scaling import Initializer


def constant(value: float) -> Initializer:
    """Every entry equal to ``value``.

    Example:
        >>> b = init.constant(0.1)(jax.random.key(0), (10,))
    """

    def initializer(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        check_key("constant", key)
        return jnp.full(check_shape("constant", shape), value, check_dtype("constant", dtype))

    return initializer


def zeros() -> Initializer:
    """All zeros (the default for biases). Example: ``init.zeros()(key, (10,))``."""
    return constant(0.0)


def ones() -> Initializer:
    """All ones (the default for normalization scales). Example: ``init.ones()(key, (10,))``."""
    return constant(1.0)


def normal(stddev: float = 0.01, mean: float = 0.0) -> Initializer:
    """N(mean, stddev²), e.g. the course notes' ``0.01 · randn``.

    Example:
        >>> w = init.normal(0.01)(jax.random.key(0), (64, 32))
    """
    check_non_negative("normal", "stddev", stddev)

    def initializer(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        check_key("normal", key)
        dtype = check_dtype("normal", dtype)
        sample = jax.random.normal(key, check_shape("normal", shape), jnp.promote_types(
            dtype, jnp.float32))
        return (mean + stddev * sample).astype(dtype)

    return initializer


def uniform(low: float = -0.05, high: float = 0.05) -> Initializer:
    """U[low, high).

    Example:
        >>> w = init.uniform(-0.1, 0.1)(jax.random.key(0), (64, 32))
    """
    if not isinstance(low, jax.core.Tracer) and not float(low) < float(high):
        raise ValueError(f"uniform: need low < high; got low={low!r}, high={high!r}.")

    def initializer(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        check_key("uniform", key)
        dtype = check_dtype("uniform", dtype)
        sample_dtype = jnp.promote_types(dtype, jnp.float32)
        return jax.random.uniform(key, check_shape("uniform", shape), sample_dtype, low,
                                  high).astype(dtype)

    return initializer


def truncated_normal(stddev: float = 0.01, lower: float = -2.0, upper: float = 2.0) -> Initializer:
    """N(0, stddev²) cut to [lower·stddev, upper·stddev] (redrawn, not clipped).

    ``stddev`` is that of the normal before the cut, as in
    ``jax.nn.initializers.truncated_normal``; the cut shrinks the variance (by
    0.8796² for ±2). Use ``variance_scaling(..., "truncated_normal")`` for a
    corrected variance.

    Example:
        >>> w = init.truncated_normal(0.02)(jax.random.key(0), (64, 32))
    """
    check_non_negative("truncated_normal", "stddev", stddev)
    if not float(lower) < float(upper):
        raise ValueError(f"truncated_normal: need lower < upper; got {lower!r}, {upper!r}.")

    def initializer(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        check_key("truncated_normal", key)
        dtype = check_dtype("truncated_normal", dtype)
        sample = jax.random.truncated_normal(key, lower, upper, check_shape(
            "truncated_normal", shape), jnp.promote_types(dtype, jnp.float32))
        return (stddev * sample).astype(dtype)

    return initializer
