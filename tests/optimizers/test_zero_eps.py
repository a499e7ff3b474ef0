"""ε = 0: where a denominator is 0 (a gradient that was always 0) the update is 0, not NaN.

The reference is float64 NumPy written from the formulas, with 0/0 defined as 0.
Both paths run: small leaves (the XLA rule) and large float32 leaves (the
one-pass kernels on the CPU), and ε = 0 given as a number or traced.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt
from optimizers import _fused

STEPS = 3


def quotient(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den == 0, 0.0, num / den)


def reference(name, g_steps, p):
    """float64 NumPy: the optimizer's formula with ε = 0 and 0/0 := 0."""
    p = p.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    a = np.zeros_like(p)
    for t, g in enumerate(g_steps, start=1):
        g = g.astype(np.float64)
        if name == "adam":
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            p = p - 0.1 * quotient(m / (1 - 0.9**t), np.sqrt(v / (1 - 0.999**t)))
        elif name == "adagrad":
            v = v + g * g
            p = p - 0.1 * quotient(g, np.sqrt(v))
        elif name in ("rmsprop", "rmsprop_in_sqrt"):
            v = 0.9 * v + 0.1 * g * g
            p = p - 0.1 * quotient(g, np.sqrt(v))
        elif name == "rmsprop_centered":
            v = 0.9 * v + 0.1 * g * g
            a = 0.9 * a + 0.1 * g
            p = p - 0.1 * quotient(g, np.sqrt(np.maximum(v - a * a, 0)))
    return p


MAKERS = {
    "adam": lambda eps: opt.adam(0.1, eps=eps),
    "adagrad": lambda eps: opt.adagrad(0.1, eps=eps),
    "rmsprop": lambda eps: opt.rmsprop(0.1, decay=0.9, eps=eps),
    "rmsprop_in_sqrt": lambda eps: opt.rmsprop(0.1, decay=0.9, eps=eps, eps_in_sqrt=True),
    "rmsprop_centered": lambda eps: opt.rmsprop(0.1, decay=0.9, eps=eps, centered=True),
}


def gradients(n, seed=0):
    """Half the coordinates have gradient exactly 0 at every step (the issue: 0/0 = NaN)."""
    rng = np.random.default_rng(seed)
    live = rng.random(n) < 0.5
    return [np.where(live, rng.normal(size=n), 0.0).astype(np.float32) for _ in range(STEPS)], live


CASES = [(name, size) for name in MAKERS for size in (100, _fused.CHUNK + 5)
         if not (name == "rmsprop_centered" and size > 100)]  # centered RMSProp has no kernel


@pytest.mark.parametrize("name, size", CASES)
def test_zero_eps_gives_zero_updates_where_the_gradient_is_zero(name, size):
    g_steps, live = gradients(size)
    p0 = np.linspace(-1, 1, size).astype(np.float32)
    tx = MAKERS[name](0.0)
    params = jnp.asarray(p0)
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    for g in g_steps:
        updates, state = step(jnp.asarray(g), state, params)
        params = opt.apply_updates(params, updates)
    params = np.asarray(params, np.float64)
    assert np.all(np.isfinite(params))
    np.testing.assert_array_equal(params[~live], p0[~live])
    np.testing.assert_allclose(params, reference(name, g_steps, p0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adam", "adagrad", "rmsprop_in_sqrt"])
def test_a_traced_zero_eps_is_safe(name):
    g_steps, live = gradients(50, seed=1)
    p0 = np.linspace(-1, 1, 50).astype(np.float32)

    @jax.jit
    def train(eps):
        tx = MAKERS[name](eps)
        params = jnp.asarray(p0)
        state = tx.init(params)
        for g in g_steps:
            updates, state = tx.update(jnp.asarray(g), state, params)
            params = opt.apply_updates(params, updates)
        return params

    params = np.asarray(train(jnp.float32(0.0)), np.float64)
    np.testing.assert_allclose(params, reference(name, g_steps, p0), rtol=1e-5, atol=1e-6)


def test_derivatives_through_a_zero_eps_step_are_finite():
    """The select is safe for autodiff: d(update)/d(lr) is finite where g = 0."""
    g = jnp.asarray([0.0, 1.0, -2.0])

    def moved(lr):
        tx = opt.adam(lr, eps=0.0)
        updates, _ = tx.update(g, tx.init(jnp.zeros(3)), jnp.zeros(3))
        return jnp.sum(updates)

    derivative = jax.grad(moved)(0.1)
    np.testing.assert_allclose(derivative, -(0 + 1 - 1), atol=1e-6)  # −Σ sign(g)
