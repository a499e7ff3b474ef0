"""Optimizers minimize things: the source texts' example, a quadratic, Rosenbrock; one compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt


def run(tx, loss, p0, steps):
    state = tx.init(p0)

    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return (opt.apply_updates(p, u), s), None

    (p, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))((p0, state))
    return p


def test_gradient_descent_example_from_the_texts():
    """sgd(0.1) on J = x² + 2y² from (−3, −3): J < 0.005 first after 17 steps, J = 0.004564."""
    J = lambda p: p[0] ** 2 + 2 * p[1] ** 2
    tx = opt.sgd(0.1)
    p = jnp.array([-3.0, -3.0], jnp.float32)
    state = tx.init(p)
    step = jax.jit(lambda p, s: tx.update(jax.grad(J)(p), s, p))
    history = []
    while not history or history[-1] >= 0.005:
        u, state = step(p, state)
        p = opt.apply_updates(p, u)
        history.append(float(J(p)))
        assert len(history) < 100
    assert len(history) == 17
    # closed form: x_n = −3·0.8ⁿ, y_n = −3·0.6ⁿ
    assert history[-1] == pytest.approx(9 * 0.64**17 + 18 * 0.36**17, rel=1e-5)
    assert round(history[-1], 6) == 0.004564
    assert history[-2] >= 0.005


OPTIMIZERS = {
    "sgd": (opt.sgd(1e-3), 10000),
    "momentum": (opt.momentum(2e-4, 0.9), 5000),
    "nesterov": (opt.momentum(2e-4, 0.9, nesterov=True), 5000),
    "adagrad": (opt.adagrad(0.5), 5000),
    "rmsprop": (opt.rmsprop(1e-3), 5000),
    "rmsprop_centered_momentum": (opt.rmsprop(2e-4, centered=True, momentum=0.9), 5000),
    "adam": (opt.adam(0.02), 5000),
    "adamw": (opt.adamw(0.02, weight_decay=1e-5), 5000),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_minimizes_rosenbrock(name):
    tx, steps = OPTIMIZERS[name]
    rosen = lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2
    p = run(tx, rosen, jnp.array([-1.2, 1.0]), steps)
    assert float(rosen(p)) < 1e-3
    np.testing.assert_allclose(np.asarray(p), [1.0, 1.0], atol=0.08)


QUADRATIC = {
    "sgd": opt.sgd(0.05), "momentum": opt.momentum(0.01), "adagrad": opt.adagrad(0.5),
    "rmsprop": opt.rmsprop(opt.schedules.exponential_decay(0.02, 0.005)),
    "adam": opt.adam(opt.schedules.cosine_decay(0.05, 1000)),
    "adamw": opt.adamw(opt.schedules.cosine_decay(0.05, 1000), weight_decay=0.0),
}


@pytest.mark.parametrize("name", list(QUADRATIC))
def test_minimizes_ill_conditioned_quadratic(name):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    a = jnp.asarray(q @ np.diag(np.linspace(1, 10, 10)) @ q.T)
    f = lambda p: 0.5 * p["x"] @ a @ p["x"]
    p0 = {"x": jnp.asarray(rng.normal(size=10))}
    p = run(QUADRATIC[name], f, p0, 1000)
    assert float(f(p)) < 1e-4 * float(f(p0))


@pytest.mark.parametrize("make", [lambda: opt.adam(1e-3), lambda: opt.momentum(0.1, 0.9),
                                  lambda: opt.chain(opt.clip_by_global_norm(1.0),
                                                    opt.adamw(1e-3))])
def test_step_compiles_once_even_when_hyperparams_change(make):
    tx = make()
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return opt.apply_updates(params, updates), state

    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    state = tx.init(params)
    params, state = step(params, state, grads)
    params, state = step(params, state, grads)
    before = params
    state = opt.set_hyperparams(state, learning_rate=0.5)
    params, state = step(params, state, grads)
    assert len(traces) == 1
    assert float(opt.hyperparams(state)["learning_rate"]) == 0.5
    # the new rate took effect (a bigger step than the tiny default would give)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(before)))
    assert moved > 0.01
