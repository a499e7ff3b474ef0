"""Parity with optax (a test extra) where the conventions align, and use through optax's protocol.

Both run in float64 for 100 steps; the tolerance (1e-8 relative) allows for the two
libraries rounding in a different order, which RMSProp amplifies.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers as opt


def problem(seed, dtype=jnp.float64):
    keys = jax.random.split(jax.random.key(seed), 4)
    params = {
        "dense": {"w": jax.random.normal(keys[0], (8, 5), dtype), "b": jnp.zeros((5,), dtype)},
        "out": jax.random.normal(keys[1], (5,), dtype),
    }
    x = jax.random.normal(keys[2], (32, 8), dtype)
    y = jax.random.normal(keys[3], (32,), dtype)

    def loss(p):
        h = jnp.tanh(x @ p["dense"]["w"] + p["dense"]["b"])
        return jnp.mean((h @ p["out"] - y) ** 2)

    return params, loss


def train(tx, apply_updates, seed=0, steps=100):
    params, loss = problem(seed)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, float(loss(params))


is_matrix = lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p)

PAIRS = {
    "sgd": (opt.sgd(0.1), optax.sgd(0.1)),
    "momentum": (opt.momentum(0.05, 0.9), optax.sgd(0.05, momentum=0.9)),
    "nesterov": (opt.momentum(0.05, 0.9, nesterov=True), optax.sgd(0.05, momentum=0.9, nesterov=True)),
    "adam": (opt.adam(0.01), optax.adam(0.01)),
    "adam_betas": (opt.adam(0.01, b1=0.8, b2=0.99, eps=1e-6), optax.adam(0.01, 0.8, 0.99, 1e-6)),
    "adamw": (opt.adamw(0.01, weight_decay=0.1), optax.adamw(0.01, weight_decay=0.1)),
    "adamw_mask": (opt.adamw(0.01, weight_decay=0.1, mask=is_matrix),
                   optax.adamw(0.01, weight_decay=0.1, mask=is_matrix)),
    # optax's AdaGrad puts eps inside the root and starts the sum at 0.1
    "adagrad": (opt.adagrad(0.1, eps=1e-7, initial_accumulator=0.1, eps_in_sqrt=True),
                optax.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-7)),
    # optax's RMSProp puts eps inside the root; its default decay is 0.9
    # (small rates: RMSProp's sign-like steps make rounding differences grow near an optimum)
    "rmsprop": (opt.rmsprop(0.002, decay=0.9, eps_in_sqrt=True), optax.rmsprop(0.002, decay=0.9)),
    "rmsprop_centered": (opt.rmsprop(0.002, decay=0.9, eps=1e-6, centered=True, eps_in_sqrt=True),
                         optax.rmsprop(0.002, decay=0.9, eps=1e-6, centered=True)),
    "rmsprop_momentum": (opt.rmsprop(0.001, decay=0.9, momentum=0.9, eps_in_sqrt=True),
                         optax.rmsprop(0.001, decay=0.9, momentum=0.9)),
    "clip_sgd": (opt.chain(opt.clip_by_global_norm(0.1), opt.sgd(0.1)),
                 optax.chain(optax.clip_by_global_norm(0.1), optax.sgd(0.1))),
    "decay_sgd": (opt.chain(opt.add_decayed_weights(0.01), opt.sgd(0.1)),
                  optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.1))),
    "schedule": (opt.adam(opt.schedules.cosine_decay(0.02, 100)),
                 optax.adam(optax.cosine_decay_schedule(0.02, 100))),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_matches_optax(name):
    ours_tx, theirs_tx = PAIRS[name]
    ours, ours_loss = train(ours_tx, opt.apply_updates)
    theirs, theirs_loss = train(theirs_tx, optax.apply_updates)
    start = float(problem(0)[1](problem(0)[0]))
    assert ours_loss < 0.9 * start, "training did not reduce the loss"
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8, atol=1e-10)


def test_mixes_with_optax_transforms():
    """Our optimizer is the tx of code written for optax, chained with optax's own transforms."""
    ours = optax.chain(optax.clip_by_global_norm(0.1), opt.adam(0.01))
    theirs = optax.chain(optax.clip_by_global_norm(0.1), optax.adam(0.01))
    a, _ = train(ours, optax.apply_updates, steps=50)
    b, _ = train(theirs, optax.apply_updates, steps=50)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-8, atol=1e-10)


def test_flax_train_state_accepts_our_optimizer():
    from flax.training import train_state

    params, loss = problem(1)
    runs = {}
    for name, tx in {"ours": opt.adam(0.01), "optax": optax.adam(0.01)}.items():
        state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)

        @jax.jit
        def step(state):
            return state.apply_gradients(grads=jax.grad(loss)(state.params))

        for _ in range(30):
            state = step(state)
        runs[name] = state.params
    for x, y in zip(jax.tree_util.tree_leaves(runs["ours"]), jax.tree_util.tree_leaves(runs["optax"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-8, atol=1e-10)
