"""Value checks of the building blocks, partition groups and ema under jit, vmap and grad.

A concrete value (also a constant captured by a jitted function) is a clear error; a traced
value out of range makes the result NaN, never a plausible wrong number.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.linspace(0.5, 1.5, 3)}
GRADS = jax.tree_util.tree_map(lambda p: 2.0 * p + 0.1, PARAMS)

MAKERS = {
    "scale": lambda v: opt.scale(v),
    "adam eps_root": lambda v: opt.chain(opt.scale_by_adam(eps_root=v),
                                         opt.scale_by_learning_rate(0.1)),
    "rms decay": lambda v: opt.chain(opt.scale_by_rms(decay=v), opt.scale_by_learning_rate(0.1)),
    "trust coefficient": lambda v: opt.chain(opt.scale_by_trust_ratio(trust_coefficient=v),
                                             opt.scale_by_learning_rate(0.1)),
    "lion b1": lambda v: opt.lion(0.1, b1=v),
    "lamb rate": lambda v: opt.lamb(v),
}
BAD = {"scale": float("nan"), "adam eps_root": -1.0, "rms decay": 1.5, "trust coefficient": -1.0,
       "lion b1": 2.0, "lamb rate": -0.1}
GOOD = {"scale": -0.1, "adam eps_root": 1e-8, "rms decay": 0.9, "trust coefficient": 1.0,
        "lion b1": 0.9, "lamb rate": 0.1}


def updates_of(tx, params=PARAMS):
    return tx.update(GRADS, tx.init(params), params)[0]


def all_nan(tree):
    return all(bool(jnp.all(jnp.isnan(x))) for x in jax.tree_util.tree_leaves(tree))


def all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", list(MAKERS))
def test_a_captured_constant_out_of_range_is_a_clear_error_under_jit(name):
    bad = jnp.asarray(BAD[name])  # concrete, captured by the jitted function
    with pytest.raises(ValueError, match="must be in"):
        jax.jit(lambda: updates_of(MAKERS[name](bad)))()


@pytest.mark.parametrize("name", list(MAKERS))
def test_a_traced_bad_value_makes_the_step_nan(name):
    make = MAKERS[name]
    run = jax.jit(lambda v: updates_of(make(v)))
    assert all_finite(run(jnp.asarray(GOOD[name])))
    assert all_nan(run(jnp.asarray(BAD[name])))
    # vmap: only the model with the bad value is NaN
    both = jax.vmap(lambda v: updates_of(make(v)))(jnp.asarray([GOOD[name], BAD[name]]))
    assert all_finite(jax.tree_util.tree_map(lambda x: x[0], both))
    assert all_nan(jax.tree_util.tree_map(lambda x: x[1], both))
    # grad, with respect to the value, of a loss of the new params
    def loss_after(v):
        new = opt.apply_updates(PARAMS, updates_of(make(v)))
        return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(new))

    value, derivative = jax.value_and_grad(loss_after)(jnp.asarray(BAD[name]))
    assert bool(jnp.isnan(value))
    if name != "lion b1":  # b1 enters only through sign(), whose derivative is a symbolic 0
        assert bool(jnp.isnan(derivative))


def test_a_traced_group_learning_rate_out_of_range_makes_only_that_group_nan():
    tx = opt.partition({"frozen": opt.freeze(), "train": opt.adam(0.1)},
                       {"w": "train", "b": "frozen"})

    @jax.jit
    def run(lr):
        state = opt.set_hyperparams(tx.init(PARAMS), "train", learning_rate=lr)
        return tx.update(GRADS, state, PARAMS)[0]

    assert all_finite(run(0.1)["w"])
    updates = run(-0.1)
    assert all_nan(updates["w"])
    np.testing.assert_array_equal(updates["b"], np.zeros(3))  # the frozen group is untouched


def test_ema_decay_captured_checked_traced_nan():
    bad = jnp.asarray(1.0)
    with pytest.raises(ValueError, match="ema: decay must be in"):
        jax.jit(lambda: opt.chain(opt.sgd(0.1), opt.ema(bad)).init(PARAMS))()

    @jax.jit
    def average(decay):
        tx = opt.chain(opt.sgd(0.1), opt.ema(decay))
        return opt.averaged_params(tx.update(GRADS, tx.init(PARAMS), PARAMS)[1])

    assert all_finite(average(0.9)) and all_nan(average(1.5))
    batch = jax.vmap(average)(jnp.asarray([0.9, -0.5]))
    assert all_finite(jax.tree_util.tree_map(lambda x: x[0], batch))
    assert all_nan(jax.tree_util.tree_map(lambda x: x[1], batch))
