"""fnn optimizers training an Equinox model (``eqx.nn.MLP``) through the usual partition:
``eqx.filter(model, eqx.is_array)`` for the optimizer, ``eqx.apply_updates`` for the step.

References: the same loop with the optax optimizer whose conventions coincide (to float
tolerance: the two libraries order their float operations differently), and fnn's own
``apply_updates`` on the same arrays (exactly).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers as opt

STEPS = 20


def problem():
    model = eqx.nn.MLP(4, 2, width_size=16, depth=2, activation=jnp.tanh,
                       key=jax.random.key(0), dtype=jnp.float64)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (64, 4), jnp.float64)
    y = jnp.stack([jnp.sin(x[:, 0] + x[:, 1]), x[:, 2] * x[:, 3]], axis=1)

    def loss(model):
        return jnp.mean((jax.vmap(model)(x) - y) ** 2)

    return model, loss


def is_weight(tree):
    """True on weight matrices; a function of the (filtered) model, like optax's masks."""
    return jax.tree.map(lambda p: p.ndim > 1, tree)


PAIRS = {  # (fnn, optax) with the same conventions
    "adam": (lambda: opt.adam(0.01), lambda: optax.adam(0.01)),
    "nesterov": (lambda: opt.momentum(0.02, momentum=0.9, nesterov=True),
                 lambda: optax.sgd(0.02, momentum=0.9, nesterov=True)),
    "adamw_masked": (lambda: opt.adamw(0.01, weight_decay=0.1, mask=is_weight),
                     lambda: optax.adamw(0.01, weight_decay=0.1, mask=is_weight)),
    # optax's AdaGrad convention, reproduced by fnn's options
    "adagrad_optax_convention": (
        lambda: opt.adagrad(0.1, eps=1e-7, initial_accumulator=0.1, eps_in_sqrt=True),
        lambda: optax.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-7)),
}


def train(tx, model, loss, steps=STEPS):
    """The Equinox idiom: state for the array leaves only, eqx.apply_updates to step."""
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state):
        grads = eqx.filter_grad(loss)(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state

    for _ in range(steps):
        model, opt_state = step(model, opt_state)
    return model, opt_state


@pytest.mark.parametrize("name", list(PAIRS))
def test_fnn_in_equinox_equals_optax_in_equinox(name):
    model, loss = problem()
    ours, ours_state = train(PAIRS[name][0](), model, loss)
    theirs, _ = train(PAIRS[name][1](), model, loss)
    assert float(loss(ours)) < 0.7 * float(loss(model)), "training did not train"
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
    via_eqx, state_eqx = train(tx, model, loss)

    params, static = eqx.partition(model, eqx.is_array)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(lambda p: loss(eqx.combine(p, static)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return opt.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for _ in range(STEPS):
        params, opt_state = step(params, opt_state)
    assert bool(eqx.tree_equal(eqx.combine(params, static), via_eqx))
    assert jax.tree.structure(opt_state) == jax.tree.structure(state_eqx)
    for a, b in zip(jax.tree.leaves(opt_state), jax.tree.leaves(state_eqx)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fnn_adagrad_defaults_are_not_optax_defaults_in_equinox():
    """The same code with fnn's AdaGrad defaults (h₀ = 0, ε outside the root) trains
    differently from optax.adagrad (h₀ = 0.1, ε inside): the conventions are not
    interchangeable, which the README's table says."""
    model, loss = problem()
    ours, _ = train(opt.adagrad(0.1), model, loss, steps=3)
    theirs, _ = train(optax.adagrad(0.1), model, loss, steps=3)
    difference = max(float(jnp.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(eqx.filter(ours, eqx.is_array)),
        jax.tree.leaves(eqx.filter(theirs, eqx.is_array))))
    assert difference > 1e-3
