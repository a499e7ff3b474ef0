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


# --------------------------------------------------------------------------- the sums kernel


def _float32_leaves(rng):
    # sizes around the kernel's block and chunk edges (16 lanes, 4 streams of 4096, 65536
    # per task), a leaf spanning tasks, a scalar, an empty leaf and a 2-D leaf
    sizes = [1, 15, 16, 17, 4 * 4096 - 1, 4 * 4096 + 33, 65536 + 5, 3 * 65536 + 7]
    leaves = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    return leaves + [np.float32(-2.5), np.zeros(0, np.float32),
                     rng.standard_normal((37, 11)).astype(np.float32)]


def _float64_sums(leaves):
    flat = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves])
    return np.sum(flat ** 2), np.sum(flat * 0)


def test_the_sums_kernel_runs_on_the_cpu_and_equals_float64_numpy():
    leaves = [jnp.asarray(x) for x in _float32_leaves(np.random.default_rng(2))]
    fn = jax.jit(lambda xs: _sums.squares_and_zeros(xs))
    if _sums._native.available():
        assert "fnn_sums_f32" in fn.lower(leaves).as_text()
    (got,) = fn(leaves)
    squares, zeros = _float64_sums(leaves)
    np.testing.assert_allclose(float(got[0]), squares, rtol=2e-6)
    assert float(got[1]) == zeros == 0.0
    np.testing.assert_allclose(np.asarray(_sums._reference(*leaves)), [squares, 0.0], rtol=2e-6)


@pytest.mark.parametrize("leaf", [0, 3, 5, 7, 8, 10])
@pytest.mark.parametrize("index", [0, -1])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_sums_kernel_finds_every_non_finite_element(leaf, index, bad):
    leaves = [jnp.asarray(x) for x in _float32_leaves(np.random.default_rng(3))]
    leaves[leaf] = leaves[leaf].ravel().at[index].set(bad).reshape(leaves[leaf].shape)
    (got,) = jax.jit(lambda xs: _sums.squares_and_zeros(xs))(leaves)
    assert np.isnan(float(got[1]))
    assert not np.isfinite(float(got[0]))
    assert not bool(jax.jit(wrappers._all_finite)(leaves))
    assert not np.isfinite(float(jax.jit(opt.global_norm)(leaves)))


def test_the_sums_kernel_under_vmap_grad_and_without_kernels(monkeypatch):
    rng = np.random.default_rng(4)
    batch = jnp.asarray(rng.standard_normal((3, 70000)).astype(np.float32))
    small = jnp.asarray(rng.standard_normal(5).astype(np.float32))
    per_example = jax.jit(jax.vmap(lambda x: opt.global_norm([x, small])))(batch)
    want = np.sqrt(np.sum(np.asarray(batch, np.float64) ** 2, axis=1)
                   + np.sum(np.asarray(small, np.float64) ** 2))
    np.testing.assert_allclose(np.asarray(per_example), want, rtol=2e-6)
    # d‖x‖/dx = x / ‖x‖
    x = batch[0]
    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(lambda x: opt.global_norm([x])))(x)),
                               np.asarray(x, np.float64) / np.linalg.norm(np.asarray(x, np.float64)),
                               rtol=2e-5, atol=1e-9)
    monkeypatch.setenv("FNN_FUSED", "0")  # no kernel call at all: the jnp formula
    fn = jax.jit(lambda xs: opt.global_norm(xs))
    assert "fnn_sums_f32" not in fn.lower([x]).as_text()
    np.testing.assert_allclose(float(fn([x])), np.linalg.norm(np.asarray(x, np.float64)),
                               rtol=2e-6)


def test_squares_and_zeros_takes_float32_leaves_only():
    with pytest.raises(TypeError, match="float32"):
        _sums.squares_and_zeros([jnp.ones(3, jnp.bfloat16)])
