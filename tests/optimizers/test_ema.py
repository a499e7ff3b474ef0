"""ema and averaged_params: an exponential moving average of the params after each step,
against float64 NumPy written from the definition (weighted sums, not the recurrence)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt


def problem(dtype=jnp.float64):
    rng = np.random.default_rng(5)
    return {"w": jnp.asarray(rng.normal(size=(3, 2)), dtype), "b": jnp.asarray(rng.normal(size=2),
                                                                               dtype)}


def grad_fn(params):
    return jax.tree_util.tree_map(lambda p: jnp.sin(3 * p) + p, params)


def trajectory(tx, params, steps, jit=True):
    """The params after each step (float64 NumPy copies) and the final state."""
    state, seen = tx.init(params), []
    step = (lambda p, s: (lambda u, s: (opt.apply_updates(p, u), s))(
        *tx.update(grad_fn(p), s, p)))
    step = jax.jit(step) if jit else step
    for _ in range(steps):
        params, state = step(params, state)
        view = opt.unpack(params) if isinstance(params, opt.Packed) else params
        seen.append({k: np.asarray(v, np.float64) for k, v in view.items()})
    return seen, state


@pytest.mark.parametrize("debias", [True, False])
def test_average_of_the_params_after_each_step(debias):
    d, steps = 0.8, 6
    params = problem()
    tx = opt.chain(opt.momentum(0.05, 0.9), opt.ema(d, debias=debias))
    seen, state = trajectory(tx, params, steps)
    # the same training without ema: ema must not change the updates
    plain, _ = trajectory(opt.momentum(0.05, 0.9), params, steps)
    for a, b in zip(seen, plain):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    average = opt.averaged_params(state)
    for k in params:
        p0 = np.asarray(params[k], np.float64)
        weights = [(1 - d) * d ** (steps - i) for i in range(1, steps + 1)]  # weight of step i
        total = sum(w * s[k] for w, s in zip(weights, seen))
        if debias:
            expected = total / (1 - d**steps)  # Σ w = 1 − dᵗ
        else:
            expected = d**steps * p0 + total
        np.testing.assert_allclose(average[k], expected, rtol=1e-12, err_msg=k)


def test_before_the_first_step_the_average_is_the_initial_params():
    params = problem()
    state = opt.chain(opt.sgd(0.1), opt.ema(0.99)).init(params)
    for k in params:
        np.testing.assert_array_equal(opt.averaged_params(state)[k], params[k])
    # one debiased step: exactly the params after it (weight 1)
    seen, state = trajectory(opt.chain(opt.sgd(0.1), opt.ema(0.99)), params, 1)
    for k in params:
        np.testing.assert_allclose(opt.averaged_params(state)[k], seen[0][k], rtol=1e-14)


def test_decay_is_data_and_can_be_set():
    params = problem()
    tx = opt.chain(opt.sgd(0.1), opt.ema(0.9, debias=False))
    state = tx.init(params)
    assert float(opt.hyperparams(state)["decay"]) == 0.9
    state = opt.set_hyperparams(state, decay=0.0)  # no memory: the average is the new params
    updates, state = tx.update(grad_fn(params), state, params)
    new = opt.apply_updates(params, updates)
    for k in params:
        np.testing.assert_allclose(opt.averaged_params(state)[k], new[k], rtol=1e-15)


@pytest.mark.parametrize("jit", [False, True])
def test_bfloat16_params_average_in_float32_and_cast_on_request(jit):
    """The average is of the params as stored (rounded to bfloat16). Under jit XLA may skip
    that rounding (xla_allow_excess_precision): then it is within a bfloat16 unit."""
    params = problem(jnp.bfloat16)
    tx = opt.chain(opt.sgd(0.01), opt.ema(0.5))
    seen, state = trajectory(tx, params, 3, jit=jit)
    average = opt.averaged_params(state)
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(average))
    as_params = opt.averaged_params(state, params)
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree_util.tree_leaves(as_params))
    weights = np.array([0.5**3, 0.5**2, 0.5]) / (1 - 0.5**3)  # debiased, steps 1..3
    for k in params:
        expected = sum(w * s[k] for w, s in zip(weights, seen))
        np.testing.assert_allclose(average[k], expected, rtol=2**-8 if jit else 1e-6)


def test_inside_skip_nonfinite_a_skipped_step_is_not_averaged():
    params = problem()
    tx = opt.skip_nonfinite(opt.chain(opt.sgd(0.1), opt.ema(0.5)))
    state = tx.init(params)
    g = grad_fn(params)
    updates, state = tx.update(g, state, params)
    after_one = opt.averaged_params(state)
    bad = jax.tree_util.tree_map(lambda x: x.at[0].set(jnp.nan), g)
    _, state = tx.update(bad, state, opt.apply_updates(params, updates))
    for k in params:
        np.testing.assert_array_equal(opt.averaged_params(state)[k], after_one[k])


def test_packed_params_and_none_leaves():
    params = problem()
    tx = opt.chain(opt.adam(0.1), opt.ema(0.7))
    packed_seen, packed_state = trajectory(tx, opt.pack(params), 3)
    _, state = trajectory(tx, params, 3)
    unpacked = opt.unpack(opt.averaged_params(packed_state))
    for k in params:
        np.testing.assert_allclose(unpacked[k], opt.averaged_params(state)[k], rtol=1e-12)
    with_none = {"a": None, **params}
    state = tx.init(with_none)
    assert opt.averaged_params(state)["a"] is None


def test_averaged_params_errors():
    params = problem()
    with pytest.raises(ValueError, match="averaged_params: this AdamState holds no ema state"):
        opt.averaged_params(opt.adam().init(params))
    two = opt.chain(opt.ema(0.9), opt.sgd(0.1), opt.ema(0.9)).init(params)
    with pytest.raises(ValueError, match=r"holds 2 ema states \(at links \(0,\), \(2,\)\)"):
        opt.averaged_params(two)
    state = opt.chain(opt.sgd(0.1), opt.ema(0.9)).init(params)
    with pytest.raises(ValueError, match="structure of the average does not match params"):
        opt.averaged_params(state, {"w": params["w"]})


def test_through_optimizers_step_the_average_follows_the_stepped_params():
    from optimizers import _fused

    rng = np.random.default_rng(2)
    n = _fused.CHUNK + 7
    params = {"w": jnp.asarray(rng.normal(size=n), jnp.float32)}
    tx = opt.chain(opt.adam(1e-2), opt.ema(0.9))

    def step(p, s):
        return opt.step(tx, grad_fn(p), s, p)

    state = tx.init(params)
    p, state = jax.jit(step)(params, state)
    p2, state = jax.jit(step)(p, state)
    # debiased, two steps: (0.9 · 0.1 p₁ + 0.1 p₂) / (1 − 0.81)
    expected = (0.09 * np.asarray(p["w"], np.float64) + 0.1 * np.asarray(p2["w"], np.float64)) / 0.19
    np.testing.assert_allclose(opt.averaged_params(state)["w"], expected, rtol=1e-5, atol=1e-6)
