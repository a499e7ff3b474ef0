"""skip_nonfinite, accumulate, masked; states checkpoint with flax.serialization and orbax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt


def tree_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


PARAMS = {"w": jnp.arange(6.0).reshape(2, 3) / 10, "b": jnp.ones(3)}


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_skip_nonfinite_leaves_params_and_state_untouched(bad):
    tx = opt.skip_nonfinite(opt.adam(0.1))
    state = tx.init(PARAMS)
    good = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    _, state = step(good, state, PARAMS)
    grads = {"w": good["w"].at[1, 2].set(bad), "b": good["b"]}
    updates, new_state = step(grads, state, PARAMS)
    assert tree_equal(opt.apply_updates(PARAMS, updates), PARAMS)
    assert tree_equal(new_state.inner, state.inner)
    assert int(new_state.skipped) == 1 and not bool(new_state.last_finite)
    # the next good step is exactly the step that would have followed without the bad one
    after_skip, _ = step(good, new_state, PARAMS)
    reference, _ = step(good, state, PARAMS)
    assert tree_equal(after_skip, reference)


def test_skip_nonfinite_counts_every_skip():
    tx = opt.skip_nonfinite(opt.sgd(0.1))
    state = tx.init(PARAMS)
    nan = jax.tree_util.tree_map(lambda p: jnp.full_like(p, jnp.nan), PARAMS)
    for _ in range(3):
        _, state = tx.update(nan, state, PARAMS)
    _, state = tx.update(PARAMS, state, PARAMS)
    assert int(state.skipped) == 3 and bool(state.last_finite)


@pytest.mark.parametrize("make", [lambda: opt.sgd(0.1), lambda: opt.adam(0.05),
                                  lambda: opt.momentum(0.05, nesterov=True)])
def test_accumulate_equals_big_batch(make):
    """k micro-batches accumulated = one step on their mean gradient (the big batch)."""
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(32, 2))), jnp.asarray(rng.normal(size=(32, 3)))
    loss = lambda p, xb, yb: jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)
    every = 4
    acc_tx, big_tx = opt.accumulate(make(), every=every), make()
    p_acc, p_big = PARAMS, PARAMS
    s_acc, s_big = acc_tx.init(PARAMS), big_tx.init(PARAMS)
    for _epoch in range(3):
        for i in range(every):
            sl = slice(8 * i, 8 * (i + 1))
            u, s_acc = acc_tx.update(jax.grad(loss)(p_acc, x[sl], y[sl]), s_acc, p_acc)
            if i < every - 1:
                assert all(float(jnp.abs(v).max()) == 0 for v in jax.tree_util.tree_leaves(u))
            p_acc = opt.apply_updates(p_acc, u)
        u, s_big = big_tx.update(jax.grad(loss)(p_big, x, y), s_big, p_big)
        p_big = opt.apply_updates(p_big, u)
        for a, b in zip(jax.tree_util.tree_leaves(p_acc), jax.tree_util.tree_leaves(p_big)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)
    assert int(s_acc.mini_step) == 0


def test_masked_applies_only_where_true():
    is_weight = lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p)
    tx = opt.chain(opt.masked(opt.add_decayed_weights(0.5), is_weight), opt.sgd(0.1))
    grads = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["w"], -0.1 * (1 + 0.5 * PARAMS["w"]), rtol=1e-12)
    np.testing.assert_allclose(updates["b"], -0.1 * np.ones(3), rtol=1e-12)


def test_masked_keeps_state_only_for_selected_leaves():
    tx = opt.masked(opt.adam(0.1), {"w": False, "b": True})
    state = tx.init(PARAMS)
    assert len(jax.tree_util.tree_leaves(state.inner.mu)) == 1
    grads = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, state, PARAMS)
    # frozen: Adam applies −η itself, so passing g through would be an ascent (test_masking.py)
    np.testing.assert_array_equal(updates["w"], np.zeros_like(grads["w"]))
    np.testing.assert_allclose(updates["b"], -0.1, rtol=1e-6)  # Adam's first step: −η sign(g)


def composite():
    return opt.chain(opt.clip_by_global_norm(1.0),
                     opt.skip_nonfinite(opt.adamw(opt.schedules.cosine_decay(1e-2, 100))))


def advanced_state():
    tx = composite()
    state = tx.init(PARAMS)
    for _ in range(3):
        _, state = tx.update(jax.tree_util.tree_map(jnp.ones_like, PARAMS), state, PARAMS)
    return tx, state


def test_flax_serialization_round_trip():
    from flax import serialization

    tx, state = advanced_state()
    blank = tx.init(PARAMS)
    restored = serialization.from_bytes(blank, serialization.to_bytes(state))
    assert tree_equal(restored, state)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    # the restored state continues exactly like the original
    g = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
    assert tree_equal(tx.update(g, restored, PARAMS), tx.update(g, state, PARAMS))


def test_orbax_round_trip(tmp_path):
    import orbax.checkpoint as ocp

    tx, state = advanced_state()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "state", tx.init(PARAMS))
    assert tree_equal(restored, state)


def tree_close(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-15)


def test_switch_runs_the_chosen_optimizer_and_compiles_once():
    choices = [opt.sgd(0.1), opt.momentum(0.05), opt.adam(0.01)]
    tx = opt.switch(*choices)
    grads = jax.tree_util.tree_map(lambda p: jnp.cos(p) + 0.5, PARAMS)
    traces = []

    @jax.jit
    def step(state):
        traces.append(1)
        return tx.update(grads, state, PARAMS)

    for index, alone in enumerate(choices):
        state = tx.init(PARAMS)._replace(index=jnp.int32(index))
        alone_state = alone.init(PARAMS)
        for _ in range(3):
            updates, state = step(state)
            expected, alone_state = jax.jit(alone.update)(grads, alone_state, PARAMS)
            tree_close(updates, expected)
        tree_close(state.states[index], alone_state)
        untouched = [s for i, s in enumerate(state.states) if i != index]
        assert tree_equal(untouched, [c.init(PARAMS) for i, c in enumerate(choices) if i != index])
    assert len(traces) == 1
    # vmap over the index: three models with three optimizers in one program
    states = jax.vmap(lambda i: tx.init(PARAMS)._replace(index=i))(jnp.arange(3, dtype=jnp.int32))
    updates, _ = jax.vmap(lambda s: tx.update(grads, s, PARAMS))(states)
    for index, alone in enumerate(choices):
        expected, _ = alone.update(grads, alone.init(PARAMS), PARAMS)
        for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
            np.testing.assert_allclose(np.asarray(a[index]), np.asarray(b), rtol=1e-12)
    # hyperparameters of each branch are links
    state = opt.set_hyperparams(tx.init(PARAMS), link=2, learning_rate=0.5)
    assert float(opt.hyperparams(state, link=2)["learning_rate"]) == 0.5
    assert float(opt.hyperparams(state, link=0)["learning_rate"]) == pytest.approx(0.1)
    with pytest.raises(TypeError, match="switch: argument 1 must be an optimizer"):
        opt.switch(opt.sgd(0.1), "adam")
