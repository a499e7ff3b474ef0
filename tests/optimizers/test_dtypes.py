"""Dtypes: every optimizer works for float32/float64/bfloat16/float16 params and keeps them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt

ALL = {
    "sgd": lambda: opt.sgd(0.01),
    "momentum": lambda: opt.momentum(0.01, nesterov=True),
    "adagrad": lambda: opt.adagrad(0.01),
    "rmsprop": lambda: opt.rmsprop(0.01, centered=True, momentum=0.9),
    "adam": lambda: opt.adam(0.01),
    "adamw": lambda: opt.adamw(0.01),
    "chain": lambda: opt.chain(opt.clip_by_global_norm(1.0), opt.clip(0.5),
                               opt.add_decayed_weights(1e-4), opt.adam(0.01)),
    "wrappers": lambda: opt.skip_nonfinite(opt.accumulate(opt.adam(0.01), every=2)),
}
DTYPES = [jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", list(ALL))
def test_updates_keep_param_dtype_and_train(name, dtype):
    tx = ALL[name]()
    target = jnp.linspace(-1, 1, 12).reshape(3, 4)
    params = {"w": jnp.zeros((3, 4), dtype), "b": jnp.zeros(4, dtype)}
    loss = lambda p: jnp.sum((p["w"].astype(jnp.float32) - target) ** 2) + jnp.sum(
        p["b"].astype(jnp.float32) ** 2)
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
    start = float(loss(params))
    for _ in range(40):
        updates, state = step(params, state)
        for u, p in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(params)):
            assert u.dtype == p.dtype
        params = opt.apply_updates(params, updates)
    for p in jax.tree_util.tree_leaves(params):
        assert p.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(p)))
    assert float(loss(params)) < 0.9 * start


def test_bfloat16_adam_does_not_round_b2_to_one():
    """In bfloat16, 0.999 rounds to 1.0: v would stay 0 and m̂/√v̂ would be 0/0."""
    assert float(jnp.bfloat16(0.999)) == 1.0
    params = jnp.ones(4, jnp.bfloat16)
    tx = opt.adam(0.1)
    state = tx.init(params)
    assert state.hyperparams["b2"].dtype == jnp.float32
    updates, state = tx.update(jnp.full(4, 0.5, jnp.bfloat16), state, params)
    assert bool(jnp.all(jnp.isfinite(updates)))
    # first Adam step with bias correction is −η·sign(g)
    np.testing.assert_allclose(np.asarray(updates, np.float32), -0.1, rtol=1e-2)


def test_moment_dtype():
    params = {"w": jnp.ones((2, 2), jnp.bfloat16)}
    state = opt.adam(moment_dtype=jnp.float32).init(params)
    assert state.mu["w"].dtype == jnp.float32 and state.nu["w"].dtype == jnp.float32
    default = opt.adam().init(params)  # at least float32 by default (see the 200-step test)
    assert default.mu["w"].dtype == jnp.float32
    asked = opt.adam(moment_dtype=jnp.bfloat16).init(params)  # moment_dtype still overrides
    assert asked.mu["w"].dtype == jnp.bfloat16 and asked.nu["w"].dtype == jnp.bfloat16
    tx = opt.adam(moment_dtype=jnp.float32)
    updates, state = tx.update({"w": jnp.full((2, 2), 1e-3, jnp.bfloat16)}, state, params)
    assert updates["w"].dtype == jnp.bfloat16 and state.nu["w"].dtype == jnp.float32
    # v = 0.001·g² = 1e-9: representable in float32 moments
    assert float(state.nu["w"][0, 0]) == pytest.approx(1e-9, rel=1e-2)


def test_low_precision_arithmetic_is_done_in_float32():
    """float16 g² underflows (1e-4² = 1e-8 < 6e-8); computed in float32 it does not."""
    params = jnp.zeros(3, jnp.float16)
    tx = opt.rmsprop(0.01, moment_dtype=jnp.float32)
    state = tx.init(params)
    _, state = tx.update(jnp.full(3, 1e-4, jnp.float16), state, params)
    expected = 0.01 * float(np.float16(1e-4)) ** 2
    np.testing.assert_allclose(np.asarray(state.mean_square), expected, rtol=1e-3)


def test_default_32_bit_mode():
    """With jax_enable_x64 off (the default for users), everything stays float32."""
    with jax.enable_x64(False):
        params = {"w": jnp.ones((2, 2))}
        tx = opt.adam(opt.schedules.exponential_decay(0.1, 0.01))
        state = tx.init(params)
        updates, state = jax.jit(tx.update)(params, state, params)
        assert updates["w"].dtype == jnp.float32
        assert all(v.dtype == jnp.float32 for v in opt.hyperparams(state).values())
        np.testing.assert_allclose(np.asarray(updates["w"]), -0.1, rtol=1e-5)


def reference_adam_16bit(grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """float64 NumPy Adam from the formula; returns the updates of every step and the last ν."""
    m = np.zeros_like(grads[0])
    v = np.zeros_like(grads[0])
    updates = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        updates.append(-lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
    return updates, v


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_16_bit_adam_moments_follow_a_float64_reference_for_200_steps(dtype):
    """Default moments are float32 for 16-bit params. With 16-bit moments: float16 ν overflows
    to Inf for g = 1e4 (that coordinate froze) and underflows to 0 for g = 1e-4 (the step
    diverged); bfloat16 ν cannot decay by 0.1% a step (9.99e-4 stayed where 8.19e-4 is exact)."""
    steps = 200
    rng = np.random.default_rng(0)
    grads = []
    for t in range(steps):
        g = np.array([1.0 if t == 0 else 0.0,   # ν decays from 1e-3 by β₂ per step
                      1e-4,                     # tiny: ν = 1e-11 is below float16's range
                      1e4,                      # large: ν = 1e5 is above float16's range
                      rng.choice([-2.0, 2.0])])  # an ordinary, sign-changing gradient
        grads.append(np.asarray(jnp.asarray(g, dtype), np.float64))  # what the run sees
    expected_updates, expected_nu = reference_adam_16bit(grads)
    tx = opt.adam(1e-3)
    params = jnp.zeros(4, dtype)
    state = tx.init(params)
    assert state.mu.dtype == jnp.float32 and state.nu.dtype == jnp.float32
    step = jax.jit(lambda g, s: tx.update(g, s, params))
    for t in range(steps):
        updates, state = step(jnp.asarray(grads[t], dtype), state)
        assert updates.dtype == dtype
        # the update is the reference's, rounded once to the param dtype (absolutely, for
        # float16's subnormals below 6.1e-5)
        np.testing.assert_allclose(np.asarray(updates, np.float64), expected_updates[t],
                                   rtol=float(jnp.finfo(dtype).eps),
                                   atol=float(jnp.finfo(dtype).smallest_subnormal))
    np.testing.assert_allclose(np.asarray(state.nu, np.float64), expected_nu, rtol=1e-4)
    assert float(expected_nu[0]) == pytest.approx(1e-3 * 0.999**199)  # 8.19e-4


def test_accumulate_sums_16_bit_gradients_in_float32():
    state = opt.accumulate(opt.sgd(0.1), every=2).init({"w": jnp.ones(3, jnp.bfloat16)})
    assert state.grad_sum["w"].dtype == jnp.float32
