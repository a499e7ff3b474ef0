"""Value checks of the optimizers package under jit, vmap and grad, with captured constants.

A concrete value (also a constant captured by a jitted function) is checked
where the user called us and gives a clear error, never a ConcretizationTypeError.
A traced value cannot be checked: an out-of-range one then makes the result NaN
(visible), never a plausible wrong number such as a step up the gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt
from optimizers import schedules as S

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.linspace(0.5, 1.5, 3)}
GRADS = jax.tree_util.tree_map(lambda p: 2.0 * p + 0.1, PARAMS)


def loss(params):
    return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(params))


def stepped(tx, params=PARAMS, state=None):
    state = tx.init(params) if state is None else state
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return opt.apply_updates(params, updates), updates


def all_nan(tree):
    return all(bool(jnp.all(jnp.isnan(x))) for x in jax.tree_util.tree_leaves(tree))


def all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


# ------------------------------------------------------------ hyperparameters


@pytest.mark.parametrize("make", [lambda v: opt.sgd(v), lambda v: opt.adam(v),
                                  lambda v: opt.adam(0.1, b1=v), lambda v: opt.momentum(0.1, v),
                                  lambda v: opt.clip(v)],
                         ids=["sgd lr", "adam lr", "adam b1", "momentum", "clip"])
def test_a_captured_constant_out_of_range_is_a_clear_error_under_jit(make):
    bad = jnp.asarray(-0.5)  # concrete, captured by the jitted function

    with pytest.raises(ValueError, match="must be in"):
        jax.jit(lambda p: stepped(make(bad), p))(PARAMS)


def test_a_captured_good_constant_works_under_jit_vmap_and_grad():
    lr = jnp.asarray(0.1)
    new, _ = jax.jit(lambda p: stepped(opt.sgd(lr), p))(PARAMS)
    np.testing.assert_allclose(new["b"], 0.8 * np.asarray(PARAMS["b"]), rtol=1e-6)
    batch = jax.tree_util.tree_map(lambda x: jnp.stack([x, 2 * x]), PARAMS)
    new, _ = jax.vmap(lambda p: stepped(opt.sgd(lr), p))(batch)
    np.testing.assert_allclose(new["b"][1], 1.6 * np.asarray(PARAMS["b"]), rtol=1e-6)
    g = jax.grad(lambda p: loss(stepped(opt.sgd(lr), p)[0]))(PARAMS)
    np.testing.assert_allclose(g["b"], 2 * 0.8**2 * np.asarray(PARAMS["b"]), rtol=1e-6)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_a_traced_bad_learning_rate_makes_the_step_nan_not_an_ascent(value):
    new, updates = jax.jit(lambda lr: stepped(opt.sgd(lr)))(jnp.float32(value))
    assert all_nan(updates) and all_nan(new)
    # vmap: only the model with the bad rate is NaN
    new, _ = jax.vmap(lambda lr: stepped(opt.adam(lr)))(jnp.asarray([0.1, value]))
    assert all_finite(jax.tree_util.tree_map(lambda x: x[0], new))
    assert all_nan(jax.tree_util.tree_map(lambda x: x[1], new))
    # grad through the step with respect to the rate
    derivative = jax.grad(lambda lr: loss(stepped(opt.sgd(lr))[0]))(jnp.float32(value))
    assert bool(jnp.isnan(derivative))


def test_traced_set_hyperparams_out_of_range_makes_the_step_nan():
    tx = opt.adam(0.1)

    @jax.jit
    def run(b2):
        state = opt.set_hyperparams(tx.init(PARAMS), b2=b2)
        return stepped(tx, state=state)[1]

    assert all_finite(run(0.99)) and all_nan(run(1.5))
    batch = jax.vmap(lambda v: opt.set_hyperparams(tx.init(PARAMS), learning_rate=v))(
        jnp.asarray([0.1, -0.1]))
    updates = jax.vmap(lambda s: stepped(tx, state=s)[1])(batch)
    assert all_finite(jax.tree_util.tree_map(lambda x: x[0], updates))
    assert all_nan(jax.tree_util.tree_map(lambda x: x[1], updates))


def test_set_hyperparams_with_a_captured_constant_is_checked_under_jit():
    bad = jnp.asarray([0.1, -0.2])
    state = opt.adam().init(PARAMS)
    with pytest.raises(ValueError, match="every learning_rate must be in"):
        jax.jit(lambda s: opt.set_hyperparams(s, learning_rate=bad))(
            jax.vmap(lambda _: state)(jnp.arange(2)))


# ------------------------------------------------------------ schedules


def test_a_schedule_going_negative_later_makes_those_steps_nan():
    """A plain function is checked at step 0 only; its later values are checked in the step."""
    tx = opt.sgd(lambda t: 0.75 - 0.25 * t)  # 0.75, 0.5, 0.25, 0, −0.25: ascent at step 5
    state = tx.init(PARAMS)
    step = jax.jit(lambda s: tx.update(GRADS, s, PARAMS))
    finite = []
    for _ in range(5):
        updates, state = step(state)
        finite.append(all_finite(updates))
    assert finite == [True, True, True, True, False]
    assert all_nan(updates)


@pytest.mark.parametrize("schedule", [S.cosine_decay(0.1, 10), S.exponential_decay(0.1, 0.5),
                                      S.join([S.constant(0.1), S.linear(0.1, 0.0, 5)], [3])],
                         ids=["cosine", "exponential", "join"])
def test_a_traced_negative_step_gives_nan(schedule):
    steps = jnp.asarray([-2, 0, 4])  # a captured constant: a JAX array, not copied to the host
    values = jax.jit(lambda: schedule(steps))()
    assert bool(jnp.isnan(values[0])) and bool(jnp.all(jnp.isfinite(values[1:])))
    values = jax.vmap(schedule)(steps)
    assert bool(jnp.isnan(values[0])) and bool(jnp.all(jnp.isfinite(values[1:])))
    value = jax.jit(schedule)(-1)
    assert bool(jnp.isnan(value))


def test_schedule_arguments_under_jit_vmap_and_grad():
    init = jnp.asarray(-0.5)  # captured constant: checked
    with pytest.raises(ValueError, match="cosine_decay: init"):
        jax.jit(lambda t: S.cosine_decay(init, 10)(t))(3)
    values = jax.vmap(lambda a: S.cosine_decay(a, 10)(5))(jnp.asarray([0.1, 0.2]))
    np.testing.assert_allclose(values, [0.05, 0.1], rtol=1e-6)
    slope = jax.grad(lambda a: S.cosine_decay(a, 10)(5))(0.1)
    assert float(slope) == pytest.approx(0.5)
    # a schedule built inside a trace is not checked at construction, but in the step
    new, _ = jax.jit(lambda a: stepped(opt.sgd(S.constant(a))))(jnp.float32(-1.0))
    assert all_nan(new)


# ------------------------------------------------------------ masks and switch


def test_a_captured_mask_of_concrete_bools_under_jit_vmap_and_grad():
    mask = {"w": jnp.asarray(True), "b": jnp.asarray(False)}
    tx = opt.masked(opt.sgd(0.5), mask)
    new, _ = jax.jit(lambda p: stepped(tx, p))(PARAMS)
    np.testing.assert_array_equal(new["b"], PARAMS["b"])
    np.testing.assert_allclose(new["w"], 0.0 * np.asarray(PARAMS["w"]), atol=1e-7)
    batch = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), PARAMS)
    new, _ = jax.vmap(lambda p: stepped(tx, p))(batch)
    np.testing.assert_array_equal(new["b"][1], PARAMS["b"])
    g = jax.grad(lambda p: loss(stepped(tx, p)[0]))(PARAMS)
    np.testing.assert_allclose(g["b"], 2 * np.asarray(PARAMS["b"]), rtol=1e-6)


def test_a_traced_mask_is_a_clear_error():
    def run(flag):
        return stepped(opt.masked(opt.sgd(0.1), {"w": flag, "b": True}))

    with pytest.raises(TypeError, match=r"mask\['w'\] is a traced value"):
        jax.jit(run)(True)


def test_switch_index_checked_when_concrete_and_nan_when_traced():
    tx = opt.switch(opt.sgd(0.1), opt.adam(0.1))
    state = tx.init(PARAMS)
    captured = state._replace(index=jnp.int32(5))
    with pytest.raises(ValueError, match="state.index must be in"):
        jax.jit(lambda: tx.update(GRADS, captured, PARAMS))()
    step = jax.jit(lambda i: tx.update(GRADS, state._replace(index=i), PARAMS))
    assert all_finite(step(jnp.int32(1))[0])
    for bad in (2, -1, 100):
        updates, new = step(jnp.int32(bad))
        assert all_nan(updates)
        assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(state)
    states = jax.vmap(lambda i: state._replace(index=i))(jnp.asarray([0, 7], jnp.int32))
    updates, _ = jax.vmap(lambda s: tx.update(GRADS, s, PARAMS))(states)
    np.testing.assert_allclose(updates["b"][0], -0.1 * np.asarray(GRADS["b"]), rtol=1e-6)
    assert bool(jnp.all(jnp.isnan(updates["b"][1])))
    derivative = jax.jit(jax.grad(lambda p, i: loss(opt.apply_updates(p, tx.update(
        GRADS, state._replace(index=i), p)[0]))))(PARAMS, jnp.int32(3))
    assert all_nan(derivative)
