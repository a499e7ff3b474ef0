"""Orthogonal initialization (Saxe, McClelland & Ganguli 2014)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_dtype, check_key, check_non_negative, check_shape
from .variance_scaling import Initializer


def orthogonal(scale: float = 1.0, column_axis: int = -1) -> Initializer:
    """A (semi-)orthogonal matrix times ``scale``: WᵀW = scale²·I (or WWᵀ when wider than tall).

    The shape is viewed as a matrix of (product of the other axes) rows ×
    ``shape[column_axis]`` columns; Q of the QR decomposition of a Gaussian
    matrix, with signs fixed by diag(R) so the result is uniform (Haar) over
    orthogonal matrices. The QR runs in float32 or wider and the result is cast,
    so bfloat16 and float16 work on every backend.

    Example:
        >>> w = init.orthogonal()(jax.random.key(0), (256, 256))   # w.T @ w ≈ I
    """
    check_non_negative("orthogonal", "scale", scale)

    def initializer(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        check_key("orthogonal", key)
        shape = check_shape("orthogonal", shape)
        dtype = check_dtype("orthogonal", dtype)
        if len(shape) < 2:
            raise ValueError(
                f"orthogonal: needs a shape of rank >= 2 (a matrix or a kernel); got {shape}."
            )
        if not -len(shape) <= column_axis < len(shape):
            raise ValueError(f"orthogonal: column_axis {column_axis} is out of range for {shape}.")
        columns = shape[column_axis]
        rows = int(np.prod(shape)) // max(columns, 1)
        work = jnp.promote_types(dtype, jnp.float32)
        a = jax.random.normal(key, (max(rows, columns), min(rows, columns)), work)
        q, r = jnp.linalg.qr(a)
        q = q * jnp.sign(jnp.diag(r))  # Haar measure; a zero diagonal entry has probability 0
        if rows < columns:
            q = q.T
        w = jnp.moveaxis(q.reshape(*np.delete(shape, column_axis % len(shape)), columns), -1,
                         column_axis)
        return (scale * w).astype(dtype)

    return initializer
