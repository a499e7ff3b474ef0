"""init and tracing: hyperparameters are checked when concrete (also a constant captured by a
jitted function); traced ones pass through unchecked, and a bad traced value gives NaN weights,
never plausible wrong ones. Good traced values give the same weights as concrete ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import init

KEY = jax.random.key(0)
SHAPE = (4, 3)

# name -> (factory of one hyperparameter, a good value, a bad value)
FACTORIES = {
    "normal stddev": (lambda v: init.normal(stddev=v), 0.5, -0.5),
    "uniform low": (lambda v: init.uniform(v, 1.0), -1.0, 2.0),
    "uniform high": (lambda v: init.uniform(-1.0, v), 1.0, -2.0),
    "truncated_normal stddev": (lambda v: init.truncated_normal(v), 0.5, -0.5),
    "truncated_normal lower": (lambda v: init.truncated_normal(1.0, v, 2.0), -2.0, 3.0),
    "variance_scaling scale": (lambda v: init.variance_scaling(v, "fan_in", "normal"), 2.0, -2.0),
    "xavier_uniform gain": (lambda v: init.xavier_uniform(gain=v), 2.0, -2.0),
    "xavier_normal gain": (lambda v: init.xavier_normal(gain=v), 2.0, -2.0),
    "orthogonal scale": (lambda v: init.orthogonal(scale=v), 2.0, -2.0),
}


def draw(name, value):
    return FACTORIES[name][0](value)(KEY, SHAPE)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_under_jit_a_good_traced_value_draws_the_same_weights_and_a_bad_one_nan(name):
    _, good, bad = FACTORIES[name]
    jitted = jax.jit(lambda v: draw(name, v))
    np.testing.assert_allclose(jitted(good), draw(name, good), rtol=1e-6)
    assert np.isnan(np.asarray(jitted(bad))).all()


@pytest.mark.parametrize("name", list(FACTORIES))
def test_under_vmap_each_value_is_checked_by_the_computation(name):
    _, good, bad = FACTORIES[name]
    out = np.asarray(jax.vmap(lambda v: draw(name, v))(jnp.asarray([good, bad])))
    np.testing.assert_allclose(out[0], draw(name, good), rtol=1e-6)
    assert np.isnan(out[1]).all()


@pytest.mark.parametrize("name", list(FACTORIES))
def test_under_grad_a_good_value_differentiates_and_a_bad_one_is_nan(name):
    _, good, bad = FACTORIES[name]
    grad = jax.grad(lambda v: jnp.sum(draw(name, v) ** 2))
    assert np.isfinite(float(grad(good)))
    assert np.isnan(float(grad(bad)))


def test_grad_of_normal_weights_by_stddev_is_the_standard_draws():
    z = jax.random.normal(KEY, SHAPE, jnp.float32)  # w = mean + s·z: d Σw / ds = Σz
    np.testing.assert_allclose(jax.grad(lambda s: jnp.sum(init.normal(s)(KEY, SHAPE)))(0.3),
                               float(jnp.sum(z)), rtol=1e-6)


@pytest.mark.parametrize("transform", ["jit", "vmap", "grad"])
def test_a_bad_constant_captured_by_a_traced_function_is_an_error(transform):
    stddev = jnp.asarray(-0.5)  # captured: concrete, so checked, with NumPy (no tracing)
    value = jnp.asarray(np.inf)

    def f(x):
        return jnp.sum(init.normal(stddev)(KEY, SHAPE)) * x

    def g(x):
        return jnp.sum(init.constant(value)(KEY, SHAPE)) * x

    run = {"jit": jax.jit, "vmap": jax.vmap, "grad": jax.grad}[transform]
    x = jnp.asarray([1.0]) if transform == "vmap" else jnp.asarray(1.0)
    with pytest.raises(ValueError, match=r"normal: stddev must be >= 0"):
        run(f)(x)
    with pytest.raises(ValueError, match=r"constant: value must be a finite number"):
        run(g)(x)


def test_a_good_captured_constant_is_accepted_under_jit():
    stddev, low = jnp.asarray(0.25), jnp.asarray(-0.5)
    w = jax.jit(lambda: init.normal(stddev)(KEY, SHAPE))()
    np.testing.assert_allclose(w, init.normal(0.25)(KEY, SHAPE), rtol=1e-6)
    w = jax.jit(lambda: init.uniform(low, 0.5)(KEY, (1000,)))()
    assert float(w.min()) >= -0.5 and float(w.max()) < 0.5
