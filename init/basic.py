"""Constant and plain random initializers (no fans involved)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ._checks import (
    Initializer,
    check_dtype,
    check_fits,
    check_key,
    check_number,
    check_shape,
    nan_unless,
)

# truncated_normal: intervals beyond ±TAIL are refused, and cuts are sampled within
# ±SAMPLED_TAIL of the sampling dtype, where its inverse-CDF sampling still resolves the tail
TAIL = 4.0
SAMPLED_TAIL = {"float32": 5.0, "float64": 8.0}


def _prepare(owner: str, key: Any, shape: Any, dtype: Any) -> tuple[tuple[int, ...], Any, Any]:
    """Checks the call's arguments; returns (shape, dtype, the dtype to sample in)."""
    check_key(owner, key)
    shape = check_shape(owner, shape)
    dtype = check_dtype(owner, dtype)
    return shape, dtype, jnp.promote_types(dtype, jnp.float32)


def constant(value: float) -> Initializer:
    """Every entry equal to ``value``: w = c.

    Args:
      value: the constant c, a finite real number (that fits the dtype it is
        drawn in, e.g. |c| <= 65504 for float16).

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``; the key is
      checked and otherwise unused.

    Example:
      >>> init.constant(0.1)(jax.random.key(0), (3,))
      Array([0.1, 0.1, 0.1], dtype=float32)
    """
    check_number("constant", "value", value)

    def initializer(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape, dtype, _ = _prepare("constant", key, shape, dtype)
        check_fits("constant", "value", value, dtype)
        return jnp.full(shape, value, dtype)

    return initializer


def zeros() -> Initializer:
    """All zeros, w = 0: the default for biases (and the wrong choice for weights).

    Zero weights give every hidden unit of a layer the same output and the same
    gradient, so the units never become different (the symmetry is never broken).

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
      >>> init.zeros()(jax.random.key(0), (2,))
      Array([0., 0.], dtype=float32)
    """
    return constant(0.0)


def ones() -> Initializer:
    """All ones, w = 1: the default for normalization scales.

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
      >>> init.ones()(jax.random.key(0), (2,))
      Array([1., 1.], dtype=float32)
    """
    return constant(1.0)


def normal(stddev: float = 0.01, mean: float = 0.0) -> Initializer:
    """Gaussian weights: w ~ N(mean, stddev²), e.g. the classic ``0.01 · randn``.

    Args:
      stddev: the standard deviation, a finite number ≥ 0.
      mean: the mean, a finite number.

    Traced (inside ``jax.jit``/``vmap``/``grad``) arguments are not checked; a
    negative stddev then gives NaN weights.

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
      >>> w = init.normal(0.01)(jax.random.key(0), (64, 32))
    """
    check_number("normal", "stddev", stddev, non_negative=True)
    check_number("normal", "mean", mean)

    def initializer(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape, dtype, work = _prepare("normal", key, shape, dtype)
        scale = nan_unless(stddev, lambda s: s >= 0)
        return (mean + scale * jax.random.normal(key, shape, work)).astype(dtype)

    return initializer


def uniform(low: float = -0.05, high: float = 0.05) -> Initializer:
    """Uniform weights: w ~ U[low, high), mean (low + high)/2, variance (high − low)²/12.

    Args:
      low: the lower bound (included), a finite number.
      high: the upper bound (excluded), a finite number > low.

    Traced arguments are not checked; low >= high then gives NaN weights.

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
      >>> w = init.uniform(-0.1, 0.1)(jax.random.key(0), (64, 32))
      >>> bool(abs(w).max() <= 0.1)
      True
    """
    check_number("uniform", "low", low)
    check_number("uniform", "high", high)
    concrete = not any(isinstance(v, jax.core.Tracer) for v in (low, high))
    if concrete and not float(low) < float(high):
        raise ValueError(f"uniform: low must be < high; got low={low!r}, high={high!r}.")

    def initializer(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape, dtype, work = _prepare("uniform", key, shape, dtype)
        for name, bound in (("low", low), ("high", high)):
            check_fits("uniform", name, bound, dtype)
        if concrete:
            check_fits("uniform", "high - low", float(high) - float(low), work)
        # traced bounds are unchecked: low >= high makes both NaN (plain draws would be wrong)
        bounds = jnp.stack(jnp.broadcast_arrays(low, high)) if not concrete else (low, high)
        bounds = nan_unless(bounds, lambda b: b[0] < b[1])
        return jax.random.uniform(key, shape, work, bounds[0], bounds[1]).astype(dtype)

    return initializer


def truncated_normal(stddev: float = 0.01, lower: float = -2.0, upper: float = 2.0) -> Initializer:
    """w = stddev · z with z ~ N(0, 1) restricted to [lower, upper] (redrawn, not clipped).

    ``stddev`` is that of the normal *before* the cut, as in
    ``jax.nn.initializers.truncated_normal`` and ``tf.keras``' TruncatedNormal:
    |w| ≤ 2·stddev for the default cut, and the variance is smaller than
    stddev² (by the factor 0.87962566² ≈ 0.774 for [−2, 2]). For weights with
    exactly a requested variance use ``variance_scaling(..., "truncated_normal")``.

    Args:
      stddev: the standard deviation of the normal before truncation, a finite
        number ≥ 0.
      lower: the lower cut, in units of stddev (may be −inf), < 4.
      upper: the upper cut, in units of stddev (may be +inf), > lower and > −4.

    An interval entirely beyond ±4 is refused, and cuts beyond ±5 (float32
    sampling; ±8 for float64) are sampled as ±5 (±8; the mass lost is below
    3e-7 of the normal's): ``jax.random.truncated_normal`` inverts the CDF in
    that precision and there returns the interval's end, or 3.4e38, instead of
    tail samples. Traced arguments are not checked; lower >= upper or a
    negative stddev then give NaN weights.

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
      >>> w = init.truncated_normal(0.02)(jax.random.key(0), (64, 32))
      >>> bool(abs(w).max() <= 0.04)
      True
    """
    check_number("truncated_normal", "stddev", stddev, non_negative=True)
    check_number("truncated_normal", "lower", lower, finite=False)
    check_number("truncated_normal", "upper", upper, finite=False)
    concrete = not any(isinstance(v, jax.core.Tracer) for v in (lower, upper))
    if concrete and not float(lower) < float(upper):
        raise ValueError(f"truncated_normal: lower must be < upper; got lower={lower!r}, "
                         f"upper={upper!r}.")
    if concrete and not (float(lower) < TAIL and float(upper) > -TAIL):
        raise ValueError(f"truncated_normal: the cut [lower, upper] = [{lower!r}, {upper!r}] "
                         f"lies entirely beyond ±{TAIL:g} standard deviations, where the "
                         f"sampling is inaccurate; expected lower < {TAIL:g} and "
                         f"upper > {-TAIL:g}.")

    def initializer(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape, dtype, work = _prepare("truncated_normal", key, shape, dtype)
        limit = SAMPLED_TAIL[jnp.dtype(work).name]
        bounds = jnp.clip(jnp.stack(jnp.broadcast_arrays(lower, upper)), -limit, limit) \
            if not concrete else (min(max(float(lower), -limit), limit),
                                  min(max(float(upper), -limit), limit))
        bounds = nan_unless(bounds, lambda b: b[0] < b[1])
        sample = jax.random.truncated_normal(key, bounds[0], bounds[1], shape, work)
        return (nan_unless(stddev, lambda s: s >= 0) * sample).astype(dtype)

    return initializer
