"""Hyperparameters as data: read, set, vmap over them, and the dtypes they are kept in."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt


def problem(dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(0), 3)
    params = {"w": jax.random.normal(keys[0], (6, 3), dtype), "b": jnp.zeros(3, dtype)}
    x = jax.random.normal(keys[1], (16, 6), dtype)
    y = jax.random.normal(keys[2], (16, 3), dtype)
    loss = lambda p: jnp.mean((jnp.tanh(x @ p["w"] + p["b"]) - y) ** 2)
    return params, loss


FACTORIES = {
    "sgd": lambda lr: opt.sgd(lr),
    "momentum": lambda lr: opt.momentum(lr, 0.9, nesterov=True),
    "adagrad": lambda lr: opt.adagrad(lr),
    "rmsprop": lambda lr: opt.rmsprop(lr, centered=True, momentum=0.5),
    "adam": lambda lr: opt.adam(lr),
    "adamw": lambda lr: opt.adamw(lr, weight_decay=0.1),
    "chain": lambda lr: opt.chain(opt.clip_by_global_norm(1.0), opt.adam(lr)),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_vmap_over_learning_rates_equals_separate_runs(name):
    make = FACTORIES[name]
    # float64, so that the comparison is not at the mercy of float32 rounding order
    params, loss = problem(jnp.float64)
    rates = jnp.array([0.001, 0.01, 0.03, 0.1])
    tx = make(0.01)

    def train(params, state, steps=20):
        def body(carry, _):
            p, s = carry
            u, s = tx.update(jax.grad(loss)(p), s, p)
            return (opt.apply_updates(p, u), s), None
        return jax.lax.scan(body, (params, state), None, length=steps)[0]

    states = jax.vmap(lambda lr: opt.set_hyperparams(tx.init(params), learning_rate=lr))(rates)
    batched_params = jax.tree_util.tree_map(lambda x: jnp.stack([x] * len(rates)), params)
    traces = []

    @jax.jit
    def train_all(p, s):
        traces.append(1)
        return jax.vmap(train)(p, s)

    together, _ = train_all(batched_params, states)
    train_all(batched_params, states)
    assert len(traces) == 1
    finals = []
    for i, lr in enumerate(rates):
        alone_tx = make(float(lr))
        alone, _ = jax.lax.scan(
            lambda c, _, t=alone_tx: ((lambda u_s: (opt.apply_updates(c[0], u_s[0]), u_s[1]))(
                t.update(jax.grad(loss)(c[0]), c[1], c[0])), None),
            (params, alone_tx.init(params)), None, length=20)[0]
        finals.append(float(loss(alone)))
        for a, b in zip(jax.tree_util.tree_leaves(alone), jax.tree_util.tree_leaves(together)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b[i]), rtol=1e-10, atol=1e-12)
    assert len(set(np.round(finals, 6))) == len(rates), "different rates must give different models"


def test_read_and_set():
    params, _ = problem()
    tx = opt.chain(opt.clip_by_global_norm(2.0), opt.adamw(1e-3, weight_decay=0.1))
    state = tx.init(params)
    hp = opt.hyperparams(state)
    assert set(hp) == {"max_norm", "learning_rate", "b1", "b2", "eps", "weight_decay"}
    assert float(hp["b2"]) == pytest.approx(0.999)
    state = opt.set_hyperparams(state, learning_rate=0.5, max_norm=3.0)
    assert float(opt.hyperparams(state)["learning_rate"]) == 0.5
    assert float(opt.hyperparams(state, link=0)["max_norm"]) == 3.0
    assert set(opt.hyperparams(state, link=1)) == {"learning_rate", "b1", "b2", "eps", "weight_decay"}


def test_link_selects_between_two_owners():
    params, _ = problem()
    tx = opt.chain(opt.add_decayed_weights(0.1), opt.adamw(weight_decay=0.2))
    state = tx.init(params)
    state = opt.set_hyperparams(state, link=1, weight_decay=0.7)
    assert float(opt.hyperparams(state, link=0)["weight_decay"]) == pytest.approx(0.1)
    assert float(opt.hyperparams(state, link=1)["weight_decay"]) == pytest.approx(0.7)


def test_wrapped_states_are_found():
    params, loss = problem()
    tx = opt.skip_nonfinite(opt.accumulate(opt.masked(opt.adam(1e-3), {"w": True, "b": False}),
                                           every=2))
    state = tx.init(params)
    state = opt.set_hyperparams(state, learning_rate=0.25)
    assert float(opt.hyperparams(state)["learning_rate"]) == 0.25


def test_scheduled_value_is_the_one_the_last_step_used():
    params, loss = problem()
    tx = opt.adam(opt.schedules.piecewise_constant([0.1, 0.01], [3]))
    state = tx.init(params)
    seen = []
    for _ in range(5):
        _, state = tx.update(jax.grad(loss)(params), state, params)
        seen.append(float(opt.hyperparams(state)["learning_rate"]))
    np.testing.assert_allclose(seen, [0.1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


@pytest.mark.parametrize("dtype, expected", [
    (jnp.float32, jnp.float32), (jnp.float64, jnp.float64),
    (jnp.bfloat16, jnp.float32), (jnp.float16, jnp.float32),
])
def test_hyperparameter_dtype_policy(dtype, expected):
    params, _ = problem(dtype)
    state = opt.adam(opt.schedules.constant(0.1)).init(params)
    for value in opt.hyperparams(state).values():
        assert value.dtype == expected
    mixed = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(2, jnp.float64)}
    assert opt.adam().init(mixed).hyperparams["b2"].dtype == jnp.float64


def test_float64_learning_rate_is_not_rounded_to_float32():
    state = opt.sgd(0.1).init({"w": jnp.ones(2, jnp.float64)})
    assert float(state.hyperparams["learning_rate"]) == 0.1  # exactly the double 0.1
    assert float(jnp.float32(0.1)) != 0.1
