"""fnn optimizers training an Equinox model (``eqx.nn.MLP``) through the usual partition:
``eqx.filter(model, eqx.is_array)`` for the optimizer, ``eqx.apply_updates`` for the step.

References: the same loop with the optax optimizer whose conventions coincide (to float
tolerance: the two libraries order their float operations differently), and fnn's own
``apply_updates`` on the same arrays (exactly).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers as opt

STEPS = 20


@functools.cache
def problem():
    """(model, loss), built once; the model is made under jit (eager operations compile one
    by one)."""
    model = eqx.filter_jit(lambda key: eqx.nn.MLP(4, 2, width_size=16, depth=2,
                                                  activation=jnp.tanh, key=key,
                                                  dtype=jnp.float64))(jax.random.key(0))
    x = np.random.default_rng(1).normal(size=(64, 4))
    y = np.stack([np.sin(x[:, 0] + x[:, 1]), x[:, 2] * x[:, 3]], axis=1)

    def loss(model):
        return jnp.mean((jax.vmap(model)(x) - y) ** 2)

    return model, loss


def is_weight(tree):
    """True on weight matrices; a function of the (filtered) model, like optax's masks."""
    return jax.tree.map(lambda p: p.ndim > 1, tree)


PAIRS = {  # (fnn, optax) with the same conventions
    "adam": (lambda: opt.adam(0.01), lambda: optax.adam(0.01)),
    "adamw_masked": (lambda: opt.adamw(0.01, weight_decay=0.1, mask=is_weight),
                     lambda: optax.adamw(0.01, weight_decay=0.1, mask=is_weight)),
    # optax's AdaGrad convention, reproduced by fnn's options
    "adagrad_optax_convention": (
        lambda: opt.adagrad(0.1, eps=1e-7, initial_accumulator=0.1, eps_in_sqrt=True),
        lambda: optax.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-7)),
}


def train(tx, model, loss, steps=STEPS):
    """The Equinox idiom: state for the array leaves only, eqx.apply_updates to step.
    Returns the trained model, its optimizer state and the losses before and after."""
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state):
        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    losses = []
    for _ in range(steps):
        model, opt_state, value = step(model, opt_state)
        losses.append(float(value))
    return model, opt_state, losses


@pytest.mark.parametrize("name", list(PAIRS))
def test_fnn_in_equinox_equals_optax_in_equinox(name):
    model, loss = problem()
    ours, ours_state, losses = train(PAIRS[name][0](), model, loss)
    theirs, _, _ = train(PAIRS[name][1](), model, loss)
    assert losses[-1] < 0.7 * losses[0], "training did not train"
    # the static part (activation, shapes) comes back untouched
    assert eqx.tree_equal(eqx.filter(ours, eqx.is_array, inverse=True),
                          eqx.filter(model, eqx.is_array, inverse=True))
    for a, b in zip(jax.tree.leaves(eqx.filter(ours, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(theirs, eqx.is_array))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    if name == "adamw_masked":  # the mask, a function of the Equinox module, reached fnn
        assert "weight_decay" in opt.hyperparams(ours_state)


def test_eqx_apply_updates_equals_fnn_apply_updates_on_the_partition():
    """The partitioned arrays stepped by fnn's own loop (``eqx.partition`` / ``eqx.combine``
    and ``optimizers.apply_updates``) equal the Equinox idiom bit for bit."""
    model, loss = problem()
    tx = opt.chain(opt.clip_by_global_norm(0.5), opt.adagrad(0.1))
    via_eqx, state_eqx, _ = train(tx, model, loss)

    params, static = eqx.partition(model, eqx.is_array)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(lambda p: loss(eqx.combine(p, static)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return opt.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for _ in range(STEPS):
        params, opt_state = step(params, opt_state)
    combined = eqx.combine(params, static)
    assert jax.tree.structure(combined) == jax.tree.structure(via_eqx)
    assert jax.tree.structure(opt_state) == jax.tree.structure(state_eqx)
    for a, b in zip(jax.tree.leaves((combined, opt_state)), jax.tree.leaves((via_eqx, state_eqx))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
