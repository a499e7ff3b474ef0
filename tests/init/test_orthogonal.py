"""orthogonal: (semi-)orthogonality in every dtype, conv layouts, and the Haar distribution."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import init

KEY = jax.random.key(0)
DTYPES = [jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16]


def unit_roundoff(dtype):
    """u = 2^-p for a dtype with p significand bits (round to nearest)."""
    return 2.0 ** -(jnp.finfo(dtype).nmant + 1)


def tolerance(dtype):
    # Rounding each entry of M (columns of norm 1) by a relative u changes each entry of
    # MᵀM by at most 2u + u² (Cauchy-Schwarz); float32 QR adds ~1e-6.
    u = unit_roundoff(dtype)
    return 2 * u + u * u + 1e-5 if u > 1e-6 else 1e-5


def as_matrix(w, column_axis):
    """Columns = column_axis, rows = every other axis, in order (the documented view)."""
    w = np.moveaxis(np.asarray(w, np.float64), column_axis, -1)
    return w.reshape(-1, w.shape[-1])


# (shape, column_axis): square, tall, wide, HWIO kernels with r ≥ c and r < c, column_axis=0
SHAPES = [((64, 64), -1), ((96, 40), -1), ((40, 96), -1), ((3, 3, 8, 16), -1),
          ((2, 2, 8, 64), -1), ((16, 3, 3, 2), 0)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("shape, column_axis", SHAPES, ids=[str(s) for s in SHAPES])
def test_semi_orthogonal(shape, column_axis, dtype):
    scale = 2.0
    w = init.orthogonal(scale=scale, column_axis=column_axis)(KEY, shape, dtype)
    assert w.shape == shape and w.dtype == dtype
    m = as_matrix(w, column_axis) / scale
    rows, columns = m.shape
    assert rows * columns == math.prod(shape)
    gram = m.T @ m if rows >= columns else m @ m.T  # the smaller Gram matrix is the identity
    np.testing.assert_allclose(gram, np.eye(min(rows, columns)), rtol=0, atol=tolerance(dtype))
    if rows != columns:  # the larger one is a projection of rank min(rows, columns), not I
        big = m @ m.T if rows >= columns else m.T @ m
        assert abs(np.trace(big) - min(rows, columns)) < 0.05 * min(rows, columns)
        assert not np.allclose(big, np.eye(big.shape[0]), atol=0.1)


def test_haar_distributed():
    """Entries of a Haar-random n×n orthogonal matrix have mean 0 and variance 1/n.

    Without the sign correction by diag(R), Householder QR makes the first column
    have a fixed-sign first entry, so the mean of W[0, 0] would be far from 0.
    """
    n, draws = 8, 2000
    w = jax.vmap(lambda k: init.orthogonal()(k, (n, n), jnp.float64))(jax.random.split(KEY, draws))
    w = np.asarray(w)
    first = w[:, 0, 0]
    assert abs(first.mean()) < 6 * math.sqrt(1 / n / draws)
    assert abs((w ** 2).mean() - 1 / n) < 1e-12 * n  # each row has norm 1 exactly
    # every entry has the same law: P(w_ij > 0) = 1/2 for each (i, j)
    positive = (w > 0).mean(axis=0)
    assert np.all(np.abs(positive - 0.5) < 6 * math.sqrt(0.25 / draws))


def test_empty_shapes():
    for shape in [(0, 5), (5, 0), (0, 0), (3, 0, 4)]:
        w = init.orthogonal()(KEY, shape)
        assert w.shape == shape and w.dtype == jnp.float32


def test_scale_zero_and_default_dtype():
    assert init.orthogonal()(KEY, (4, 4)).dtype == jnp.float32
    np.testing.assert_array_equal(init.orthogonal(scale=0.0)(KEY, (4, 3)), np.zeros((4, 3)))
