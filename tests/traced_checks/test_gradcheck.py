"""fnn.gradcheck and tracing: the checks read values, so they refuse traced arguments clearly;
numerical_grad works inside jit/vmap/grad (its finite-value check is skipped there, and a NaN
of f stays visible); constants captured by f are concrete to the check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn.gradcheck import check_grads, numerical_grad

X = jnp.array([0.3, 0.7])
TRANSFORMS = {
    "jit": lambda g: jax.jit(g),
    "vmap": lambda g: lambda x: jax.vmap(g)(x[None])[0],
    "grad": lambda g: jax.grad(lambda x: jnp.sum(g(x))),
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_check_grads_inside_a_transformation_is_a_clear_error(transform):
    run = TRANSFORMS[transform](lambda x: check_grads(jnp.sum, x).max_error)
    with pytest.raises(TypeError, match=r"check_grads: args\[0\] is a traced value.*outside "
                                        r"jax.jit, jax.vmap and jax.grad"):
        run(X)


def test_a_traced_setting_is_a_clear_error():
    with pytest.raises(TypeError, match="check_grads: eps must be a concrete number; got a "
                                        "traced value"):
        jax.jit(lambda e: check_grads(jnp.sum, X, eps=e).max_error)(1e-5)


@pytest.mark.parametrize("transform", ["jit", "vmap"])
def test_numerical_grad_inside_jit_and_vmap(transform):
    run = TRANSFORMS[transform](lambda x: numerical_grad(lambda t: jnp.sum(t**3), x))
    np.testing.assert_allclose(run(X), 3 * np.asarray(X) ** 2, rtol=1e-8)


def test_numerical_grad_inside_grad():
    # d/dx Σ 3x² (by differences) = 6x
    g = jax.grad(lambda x: jnp.sum(numerical_grad(lambda t: jnp.sum(t**3), x)))(X)
    np.testing.assert_allclose(g, 6 * np.asarray(X), rtol=1e-6)


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_a_captured_nan_inside_a_trace_stays_visible(transform):
    nan = jnp.asarray(np.nan)  # captured: concrete, but f's operations on it are traced
    run = TRANSFORMS[transform](lambda x: numerical_grad(lambda t: jnp.sum(t**2) * nan, x))
    assert np.isnan(np.asarray(run(X))).all()
    with pytest.raises(ValueError, match=r"numerical_grad: f\(x\) is nan"):  # eagerly: an error
        numerical_grad(lambda t: jnp.sum(t**2) * nan, X)


def test_constants_captured_by_f_are_checked_values_not_tracers():
    labels = jnp.asarray([1, 0])
    nan = jnp.asarray(np.nan)
    report = check_grads(lambda x: jnp.sum(jax.nn.log_softmax(x)[labels]), X)
    assert report.passed
    with pytest.raises(ValueError, match="f is not finite at the given arguments"):
        check_grads(lambda x: jnp.sum(x) * nan, X)
    with pytest.raises(ValueError, match="f is not finite at the given arguments"):
        jax.jit(lambda: check_grads(lambda x: jnp.sum(x) * nan, X))()
