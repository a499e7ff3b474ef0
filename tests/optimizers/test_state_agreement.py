"""The optimizer passed to update and the state it steps never disagree silently.

Rule: the optimizer's own hyperparameters win, unless the state's value was set
with set_hyperparams (or traced when the state was made); a state from a
different optimizer is an error naming both. References are closed forms
(sgd: u = −η g; Adam's first step: u = −η sign(g)).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.linspace(0.5, 1.5, 3)}
GRADS = jax.tree_util.tree_map(lambda p: 2.0 * p + 0.1, PARAMS)


def sgd_update(lr):
    return jax.tree_util.tree_map(lambda g: -lr * np.asarray(g, np.float64), GRADS)


def assert_close(actual, expected):
    for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_the_optimizers_own_learning_rate_wins(jit):
    """The issue's case: sgd(1e-3).update on sgd(1.0)'s state stepped with 1.0."""
    tx = opt.sgd(1e-3)
    update = jax.jit(tx.update) if jit else tx.update
    updates, state = update(GRADS, opt.sgd(1.0).init(PARAMS), PARAMS)
    assert_close(updates, sgd_update(1e-3))
    assert float(opt.hyperparams(state)["learning_rate"]) == pytest.approx(1e-3)


def test_a_value_set_with_set_hyperparams_wins():
    state = opt.set_hyperparams(opt.sgd(1.0).init(PARAMS), learning_rate=0.25)
    updates, state = opt.sgd(1e-3).update(GRADS, state, PARAMS)
    assert_close(updates, sgd_update(0.25))
    assert float(opt.hyperparams(state)["learning_rate"]) == 0.25
    updates, _ = opt.sgd(1e-3).update(GRADS, state, PARAMS)  # and keeps winning
    assert_close(updates, sgd_update(0.25))


def test_only_the_names_set_are_the_states():
    state = opt.set_hyperparams(opt.adam(1.0, b1=0.5).init(PARAMS), learning_rate=0.25)
    tx = opt.adam(1e-3, b1=0.0)  # b1 = 0: the first step is −η g/|g| either way; checks b1 used
    _, state = tx.update(GRADS, state, PARAMS)
    hp = opt.hyperparams(state)
    assert float(hp["learning_rate"]) == 0.25 and float(hp["b1"]) == 0.0


def test_a_changed_learning_rate_in_a_chain_and_a_wrapper():
    tx = opt.skip_nonfinite(opt.chain(opt.clip(10.0), opt.sgd(0.5)))
    old = opt.skip_nonfinite(opt.chain(opt.clip(10.0), opt.sgd(1.0))).init(PARAMS)
    updates, _ = tx.update(GRADS, old, PARAMS)
    assert_close(updates, sgd_update(0.5))


def test_vmapped_states_keep_their_set_rates_under_another_optimizer():
    rates = jnp.array([0.1, 0.2, 0.3])
    states = jax.vmap(lambda lr: opt.set_hyperparams(opt.sgd(1.0).init(PARAMS),
                                                     learning_rate=lr))(rates)
    tx = opt.sgd(1e-3)
    updates, states = jax.jit(jax.vmap(lambda s: tx.update(GRADS, s, PARAMS)))(states)
    for i, lr in enumerate([0.1, 0.2, 0.3]):
        assert_close(jax.tree_util.tree_map(lambda u, i=i: u[i], updates), sgd_update(lr))
    np.testing.assert_allclose(opt.hyperparams(states)["learning_rate"], rates)


def test_a_state_made_by_a_traced_constructor_keeps_its_values():
    """jax.vmap(lambda lr: adam(lr).init(p)) makes states whose rates are their own data."""
    rates = jnp.array([0.1, 0.3])
    states = jax.vmap(lambda lr: opt.adam(lr).init(PARAMS))(rates)
    updates, _ = jax.vmap(lambda s: opt.adam(1e-3).update(GRADS, s, PARAMS))(states)
    for i, lr in enumerate([0.1, 0.3]):
        np.testing.assert_allclose(updates["w"][i], -lr * np.sign(np.asarray(GRADS["w"])),
                                   rtol=1e-5)


def test_the_rule_survives_a_checkpoint_round_trip():
    from flax import serialization

    state = opt.set_hyperparams(opt.adam(1.0).init(PARAMS), learning_rate=0.125)
    restored = serialization.from_bytes(opt.adam(1e-3).init(PARAMS),
                                        serialization.to_bytes(state))
    updates, _ = opt.adam(1e-3).update(GRADS, restored, PARAMS)
    np.testing.assert_allclose(updates["b"], -0.125 * np.ones(3), rtol=1e-5)
    plain = serialization.from_bytes(opt.adam(1e-3).init(PARAMS),
                                     serialization.to_bytes(opt.adam(1.0).init(PARAMS)))
    updates, _ = opt.adam(1e-3).update(GRADS, plain, PARAMS)  # an old checkpoint, a new rate
    np.testing.assert_allclose(updates["b"], -1e-3 * np.ones(3), rtol=1e-5)


MISMATCHES = [
    (lambda: opt.adam(), lambda: opt.adamw(),
     "the state was made by a different optimizer: it holds the hyperparameters b1, b2, eps, "
     "learning_rate, but adamw(...) has b1, b2, eps, learning_rate, weight_decay"),
    (lambda: opt.adamw(), lambda: opt.adam(),
     "it holds the hyperparameters b1, b2, eps, learning_rate, weight_decay, but adam(...) has "
     "b1, b2, eps, learning_rate."),
    (lambda: opt.adam(opt.schedules.constant(0.1)), lambda: opt.adam(0.1),
     "learning_rate is a fixed number in this optimizer but follows a schedule in the state"),
    (lambda: opt.sgd(0.1), lambda: opt.sgd(opt.schedules.constant(0.1)),
     "learning_rate follows a schedule in this optimizer but is a fixed number in the state"),
    (lambda: opt.rmsprop(momentum=0.5), lambda: opt.rmsprop(),
     "but rmsprop(...) has decay, eps, learning_rate."),
    (lambda: opt.rmsprop(centered=True), lambda: opt.rmsprop(),
     "the state keeps a mean_grad moment"),
    (lambda: opt.rmsprop(), lambda: opt.rmsprop(centered=True),
     "the state has no mean_grad moment"),
    (lambda: opt.clip(1.0), lambda: opt.add_decayed_weights(0.1),
     "holds the hyperparameters max_delta, but add_decayed_weights(...) has weight_decay"),
]


@pytest.mark.parametrize("index", range(len(MISMATCHES)))
def test_a_state_from_another_optimizer_is_an_error_naming_both(index):
    made_by, stepped_by, message = MISMATCHES[index]
    state = made_by().init(PARAMS)
    with pytest.raises(ValueError, match=re.escape(message)):
        stepped_by().update(GRADS, state, PARAMS)
    with pytest.raises(ValueError, match=re.escape(message)):  # static: also under jit
        jax.jit(stepped_by().update)(GRADS, state, PARAMS)


def test_fit_trains_at_the_rate_of_the_optimizer_passed():
    """The Colab habit: edit the rate, re-run the cell with the old state."""
    from fnn import train

    x = jnp.linspace(-1.0, 1.0, 16).reshape(8, 2)
    y = x @ jnp.array([[1.0], [-2.0]])
    params = {"w": jnp.zeros((2, 1))}

    def loss_fn(p, model_state, batch, key):
        xb, yb = batch
        return jnp.mean((xb @ p["w"] - yb) ** 2), (model_state, {})

    old = train.init_train_state(params, {}, opt.sgd(1e-3))
    fresh = train.init_train_state(params, {}, opt.sgd(0.5))
    runs = [train.fit(loss_fn, opt.sgd(0.5), s, (x, y), key=jax.random.key(0), epochs=1,
                      batch_size=8, progress=False)[0] for s in (old, fresh)]
    np.testing.assert_allclose(runs[0].params["w"], runs[1].params["w"], rtol=1e-6)
    # one full-batch sgd step from 0: w = −0.5 ∇, ∇ = −2 xᵀy / n
    expected = 0.5 * 2 * np.asarray(x).T @ np.asarray(y) / 8
    np.testing.assert_allclose(runs[0].params["w"], expected, rtol=1e-5)
