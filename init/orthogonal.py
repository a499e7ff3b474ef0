"""Orthogonal initialization (Saxe, McClelland & Ganguli 2014)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ._checks import (
    Initializer,
    check_axis,
    check_dtype,
    check_key,
    check_number,
    check_shape,
    nan_unless,
)


def orthogonal(scale: float = 1.0, column_axis: int = -1) -> Initializer:
    """A random (semi-)orthogonal matrix times ``scale``: WᵀW = scale²·I, or WWᵀ = scale²·I.

    The shape is viewed as a matrix M with ``shape[column_axis]`` columns and
    (the product of every other axis) rows, so a conv kernel (h, w, in, out)
    becomes (h·w·in) × out. With r rows and c columns:

    * r ≥ c: the columns are orthonormal, MᵀM = scale²·I_c;
    * r < c: the rows are orthonormal, MMᵀ = scale²·I_r.

    M is the Q factor of the QR decomposition of a standard Gaussian matrix,
    with each column's sign set by diag(R) so that M is uniformly (Haar)
    distributed. The QR runs in float32 (float64 for float64) and the result is
    cast, so bfloat16 and float16 work on every backend (XLA:CPU has no
    low-precision QR, which ``jax.nn.initializers.orthogonal`` needs).

    Args:
      scale: the multiplier (the gain), a finite number ≥ 0 (traced, it is not
        checked: a negative one gives NaN).
      column_axis: the axis whose entries index the columns of M.

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array`` for shapes of
      rank ≥ 2.

    Example:
      >>> w = init.orthogonal()(jax.random.key(0), (256, 128), jnp.bfloat16)
      >>> m = w.astype(jnp.float32)
      >>> bool(jnp.allclose(m.T @ m, jnp.eye(128), atol=1e-2))
      True

    Reference: A. M. Saxe, J. L. McClelland and S. Ganguli, "Exact solutions to
    the nonlinear dynamics of learning in deep linear neural networks", ICLR 2014.
    """
    check_number("orthogonal", "scale", scale, non_negative=True)
    check_axis("orthogonal", "column_axis", column_axis)

    def initializer(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        check_key("orthogonal", key)
        shape = check_shape("orthogonal", shape)
        dtype = check_dtype("orthogonal", dtype)
        if len(shape) < 2:
            raise ValueError(f"orthogonal: shape must have rank >= 2 (a matrix or a kernel); "
                             f"got {shape}.")
        if not -len(shape) <= column_axis < len(shape):
            raise ValueError(f"orthogonal: column_axis={column_axis} is out of range for shape "
                             f"{shape} (expected {-len(shape)} <= column_axis < {len(shape)}).")
        axis = column_axis % len(shape)
        other = shape[:axis] + shape[axis + 1:]
        rows, columns = math.prod(other), shape[axis]
        work = jnp.promote_types(dtype, jnp.float32)
        a = jax.random.normal(key, (max(rows, columns), min(rows, columns)), work)
        q, r = jnp.linalg.qr(a)
        # Haar measure: a zero diagonal entry of R has probability 0, and where() guards it anyway
        q = q * jnp.where(jnp.diag(r) < 0, -1, 1).astype(work)
        if rows < columns:
            q = q.T
        w = jnp.moveaxis(q.reshape(*other, columns), -1, axis)
        return (nan_unless(scale, lambda s: s >= 0) * w).astype(dtype)

    return initializer
