"""Value checks of a schedule's settable peak under jit, vmap and grad.

A concrete peak (also a constant captured by a jitted function) out of range is a clear error;
a traced one makes the steps whose scaled value is out of range NaN, never a plausible wrong
number.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt
from optimizers import schedules as S

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.linspace(0.5, 1.5, 3)}
GRADS = jax.tree_util.tree_map(lambda p: 2.0 * p + 0.1, PARAMS)
TX = opt.adam(S.warmup(S.cosine_decay(0.1, 20), 3))


def all_nan(tree):
    return all(bool(jnp.all(jnp.isnan(x))) for x in jax.tree_util.tree_leaves(tree))


def all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


def updates_at_peak(peak, tx=TX, steps=5):
    state = opt.set_hyperparams(tx.init(PARAMS), learning_rate=peak)
    for _ in range(steps):
        updates, state = tx.update(GRADS, state, PARAMS)
    return updates


def test_a_captured_constant_peak_out_of_range_is_a_clear_error_under_jit():
    bad = jnp.asarray(-0.1)
    with pytest.raises(ValueError, match=r"set_hyperparams: learning_rate must be in \[0, inf\)"):
        jax.jit(lambda: updates_at_peak(bad))()


def test_a_traced_peak_out_of_range_makes_the_step_nan():
    run = jax.jit(updates_at_peak)
    assert all_finite(run(jnp.asarray(0.3)))
    assert all_nan(run(jnp.asarray(-0.3)))
    # vmap: only the model with the bad peak is NaN
    both = jax.jit(jax.vmap(updates_at_peak))(jnp.asarray([0.3, -0.3]))
    assert all_finite(jax.tree_util.tree_map(lambda x: x[0], both))
    assert all_nan(jax.tree_util.tree_map(lambda x: x[1], both))

    def loss_after(peak):  # grad, with respect to the peak, of a loss of the new params
        new = opt.apply_updates(PARAMS, updates_at_peak(peak))
        return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(new))

    value_and_grad = jax.jit(jax.value_and_grad(loss_after))
    value, derivative = value_and_grad(jnp.asarray(-0.3))
    assert bool(jnp.isnan(value)) and bool(jnp.isnan(derivative))
    value, derivative = value_and_grad(jnp.asarray(0.3))
    assert bool(jnp.isfinite(value)) and bool(jnp.isfinite(derivative)) and float(derivative) != 0


def test_a_traced_peak_is_checked_at_every_step_of_the_scaled_schedule():
    """b1 rises 0.5 → 0.9 over 10 steps; a traced peak of 1.2 scales it by 4/3, so b1 reaches
    1 at step 7 (0.78 · 4/3 = 1.04): steps 0…6 are finite, the steps from 7 on NaN."""
    tx = opt.adam(0.1, b1=S.linear(0.5, 0.9, 10))

    @jax.jit
    def run(peak):
        state = opt.set_hyperparams(tx.init(PARAMS), b1=peak)

        def body(state, _):
            updates, state = tx.update(GRADS, state, PARAMS)
            return state, jnp.all(jnp.isfinite(updates["w"]))
        return jax.lax.scan(body, state, None, length=10)[1]

    np.testing.assert_array_equal(run(jnp.asarray(1.2)), [True] * 7 + [False] * 3)
    np.testing.assert_array_equal(run(jnp.asarray(0.95)), [True] * 10)  # in range throughout


def test_a_schedule_built_from_a_traced_zero_steps_at_zero_and_cannot_be_scaled():
    """Built inside a trace, a schedule's peak is traced too (kept as the state's own value).
    A traced peak of 0 steps at 0 (not 0/0); setting another peak on it gives NaN."""
    @jax.jit
    def run(init, peak):
        tx = opt.sgd(S.cosine_decay(init, 10))
        state = tx.init(PARAMS)
        plain, _ = tx.update(GRADS, state, PARAMS)
        scaled, _ = tx.update(GRADS, opt.set_hyperparams(state, learning_rate=peak), PARAMS)
        return plain, scaled

    plain, scaled = run(0.0, 0.0)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree_util.tree_leaves(plain))
    assert all(bool(jnp.all(x == 0)) for x in jax.tree_util.tree_leaves(scaled))
    plain, scaled = run(0.0, 0.1)
    assert all_finite(plain) and all_nan(scaled)
    plain, scaled = run(0.2, 0.1)  # a nonzero traced peak scales as a concrete one
    np.testing.assert_allclose(scaled["b"], -0.1 * np.asarray(GRADS["b"]), rtol=1e-12)
    np.testing.assert_allclose(plain["b"], -0.2 * np.asarray(GRADS["b"]), rtol=1e-12)
