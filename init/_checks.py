"""Argument checks shared by the initializers: keys, shapes, dtypes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_key(owner: str, key: Any) -> None:
    """Raises TypeError unless ``key`` is a PRNG key (typed, or a legacy uint32[2] key)."""
    if isinstance(key, jax.Array):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            return
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return
    hint = f" jax.random.key({key})" if isinstance(key, (int, np.integer)) else " jax.random.key(0)"
    raise TypeError(
        f"{owner}: key must be a JAX PRNG key, e.g.{hint}; got {type(key).__name__} {key!r}."
    )


def check_shape(owner: str, shape: Any) -> tuple[int, ...]:
    """The shape as a tuple of non-negative ints, or a ValueError naming it."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"{owner}: shape must be a tuple of ints; got {shape!r}.") from None
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0
               for d in dims):
        raise ValueError(f"{owner}: shape must hold non-negative ints; got {shape!r}.")
    return tuple(int(d) for d in dims)


def check_dtype(owner: str, dtype: Any) -> jnp.dtype:
    """The dtype, which must be floating point (float32, float64, bfloat16, float16, …)."""
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{owner}: {dtype!r} is not a dtype.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{owner}: dtype must be a floating-point dtype (float32, float64, bfloat16, float16); "
            f"got {dtype.name}."
        )
    return dtype


def check_non_negative(owner: str, name: str, value: float) -> None:
    if not isinstance(value, jax.core.Tracer) and not float(value) >= 0:
        raise ValueError(f"{owner}: {name} must be >= 0; got {value!r}.")


def normalize_axes(owner: str, shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
    rank = len(shape)
    out = []
    for axis in axes:
        if not -rank <= axis < rank:
            raise ValueError(
                f"{owner}: cannot compute fans of shape {tuple(shape)}: axis {axis} is out of "
                f"range for rank {rank}."
            )
        out.append(axis % rank)
    return tuple(out)
