"""The initializer contract: keys, dtypes, jit, vmap, 32-bit mode, and the docstring examples."""

import doctest
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import init

DTYPES = [jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16]
SHAPE = (16, 8)

ALL = {
    "xavier_uniform": init.xavier_uniform(), "xavier_normal": init.xavier_normal(),
    "he_uniform": init.he_uniform(), "he_normal": init.he_normal(),
    "lecun_uniform": init.lecun_uniform(), "lecun_normal": init.lecun_normal(),
    "fan_in_uniform": init.fan_in_uniform(), "orthogonal": init.orthogonal(),
    "variance_scaling": init.variance_scaling(1.0, "fan_avg", "truncated_normal"),
    "normal": init.normal(), "uniform": init.uniform(), "truncated_normal": init.truncated_normal(),
    "zeros": init.zeros(), "ones": init.ones(), "constant": init.constant(0.3),
    "scaled": init.scaled(init.he_normal(), 0.5),
}
CONSTANT = {"zeros", "ones", "constant"}


def f64(x):
    return np.asarray(x, np.float64)


@pytest.mark.parametrize("name", list(ALL))
def test_keys_and_dtypes(name):
    f = ALL[name]
    for dtype in DTYPES:
        a = f(jax.random.key(1), SHAPE, dtype)
        assert a.dtype == dtype and a.shape == SHAPE
        np.testing.assert_array_equal(f64(a), f64(f(jax.random.key(1), SHAPE, dtype)))
        different = not np.array_equal(f64(a), f64(f(jax.random.key(2), SHAPE, dtype)))
        assert different == (name not in CONSTANT)
        assert np.all(np.isfinite(f64(a)))
    # a legacy uint32[2] key draws the same as the typed key that wraps it
    np.testing.assert_array_equal(f64(f(jax.random.PRNGKey(1), SHAPE)),
                                  f64(f(jax.random.wrap_key_data(jax.random.key_data(
                                      jax.random.PRNGKey(1))), SHAPE)))
    assert f(jax.random.key(1), SHAPE).dtype == jnp.float32  # the default dtype


def draw_all(key, dtype):
    return {name: f(key, SHAPE, dtype) for name, f in ALL.items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_jit_and_vmap_over_keys(dtype):
    # every initializer, jitted and vmapped over keys, in one compiled program
    keys = jax.random.split(jax.random.key(3), 4)
    program = jax.jit(lambda key, keys: (draw_all(key, dtype),
                                         jax.vmap(lambda k: draw_all(k, dtype))(keys)))
    jitted, many = program(jax.random.key(1), keys)
    eager, third = draw_all(jax.random.key(1), dtype), draw_all(keys[2], dtype)
    tol = 4 * float(jnp.finfo(dtype).eps)  # jit may fuse the scaling differently: an ulp or so
    for name in ALL:
        assert jitted[name].dtype == dtype and jitted[name].shape == SHAPE, name
        np.testing.assert_allclose(f64(jitted[name]), f64(eager[name]), rtol=tol,
                                   atol=tol * 1e-3, err_msg=name)
        assert many[name].shape == (4, *SHAPE) and many[name].dtype == dtype, name
        np.testing.assert_allclose(f64(many[name][2]), f64(third[name]), rtol=tol,
                                   atol=tol * 1e-3, err_msg=name)
        if name not in CONSTANT:
            assert not np.array_equal(f64(many[name][0]), f64(many[name][1])), name


def test_32_bit_mode():
    with jax.enable_x64(False):
        key = jax.random.key(0)
        for name in ("xavier_uniform", "normal", "zeros"):
            assert ALL[name](key, SHAPE).dtype == jnp.float32, name
            assert ALL[name](key, SHAPE, jnp.bfloat16).dtype == jnp.bfloat16, name
        # per-leaf keys fold in 32-bit halves of a hash, also when x64 is off
        params = init.tree_init(key, {"w": (3, 2), "b": (2,), "layers": [(2, 2)] * 3},
                                init.xavier_normal())
        assert params["w"].dtype == jnp.float32
        assert not np.array_equal(params["layers"][0], params["layers"][1])


MODULES = ["init", "init._fans", "init.basic", "init.variance_scaling", "init.orthogonal",
           "init.combinators"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module),
                             extraglobs={"init": init, "jax": jax, "jnp": jnp},
                             optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0


def test_every_public_name_is_documented():
    for name in init.__all__:
        doc = getattr(init, name).__doc__ or ""
        assert len(doc.strip()) > 20, name
        if name not in ("Initializer", "Rule", "leaf_key", "compute_fans", "by_ndim", "by_path"):
            assert "Example" in doc and "Returns" in doc, name


def test_float64_draws_have_float64_precision():
    # drawn in float64, not drawn in float32 and widened: with unit scales the draws are the
    # raw samples, which float32 cannot hold
    for f in (init.normal(1.0), init.uniform(0.0, 1.0), init.truncated_normal(1.0),
              init.variance_scaling(16.0, "fan_in", "normal"),  # fan_in 16: stddev exactly 1
              init.scaled(init.normal(1.0), 2.0)):
        w = np.asarray(f(jax.random.key(1), SHAPE, jnp.float64))
        assert not np.array_equal(w.astype(np.float32).astype(np.float64), w)


def test_a_raw_key_of_the_rbg_implementation_is_one_key():
    """Raw keys are uint32[2] (threefry) or uint32[4] ("rbg"): both are one key (the check
    once took every raw key of 4 words for an error), and a batch of them is a clear error."""
    previous = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    try:
        raw = jax.random.PRNGKey(5)
        assert raw.shape == (4,)
        typed = jax.random.wrap_key_data(raw, impl="rbg")
        for f in (init.he_normal(), init.orthogonal()):
            np.testing.assert_array_equal(f64(f(raw, SHAPE)), f64(f(typed, SHAPE)))
        with pytest.raises(ValueError, match="a batch of raw keys of shape"):
            init.he_normal()(jnp.stack([raw, raw]), SHAPE)
    finally:
        jax.config.update("jax_default_prng_impl", previous)
