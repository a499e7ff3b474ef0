"""Grouped reductions (optimizers._sums): global_norm and skip_nonfinite's test over many leaves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt
from optimizers import _sums, wrappers


def _tree(rng):
    # more small leaves than one group holds, two dtypes, a large leaf, a scalar and an empty one
    leaves = [rng.standard_normal(int(rng.integers(1, 50))).astype(np.float32)
              for _ in range(_sums.GROUP + 7)]
    leaves += [rng.standard_normal(_sums.SMALL + 1).astype(np.float32),
               np.float32(3.0), np.zeros(0, np.float32),
               rng.standard_normal((4, 5)).astype(jnp.bfloat16)]
    return leaves


def test_global_norm_over_grouped_leaves_equals_float64_numpy():
    leaves = _tree(np.random.default_rng(0))
    want = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in leaves))
    for fn in (opt.global_norm, jax.jit(opt.global_norm)):
        np.testing.assert_allclose(float(fn(leaves)), want, rtol=1e-6)


@pytest.mark.parametrize("where", [0, _sums.GROUP + 3, _sums.GROUP + 7, _sums.GROUP + 10])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_element_in_any_group_or_leaf_is_found(where, bad):
    leaves = [jnp.asarray(x) for x in _tree(np.random.default_rng(1))]
    assert bool(jax.jit(wrappers._all_finite)(leaves))
    leaves[where] = leaves[where].ravel().at[-1].set(bad).reshape(leaves[where].shape)
    assert not bool(jax.jit(wrappers._all_finite)(leaves))
