"""The multi-tensor one-pass kernels (optimizers/_multi.py, _kernels/steps.cc *Multi*).

One custom call steps a list of float32 leaves of any sizes and shapes in place; it
must equal float64 NumPy references written from the formulas, the jnp fallbacks
(FNN_FUSED=0, off the CPU, vmap, derivatives), and really run in place when donated.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimizers import _fused, _multi, _native

# Scalars, empty, odd sizes, a leaf larger than one 65,536-element work chunk (so a chunk
# spans leaf boundaries) and a 2D leaf after it.
SHAPES = [(), (0,), (1,), (7,), (1000,), (70000,), (3, 5), (0, 4)]
FLAGS = np.array([1, 0, 1, 0, 1, 0, 1, 1], np.float32)
F32_ULP = np.finfo(np.float32).eps


def leaves(seed, moments):
    """grads, params and `moments` moment lists (the last one non-negative) as float32."""
    rng = np.random.default_rng(seed)

    def one(scale, positive=False):
        out = [(scale * rng.normal(size=s)).astype(np.float32) for s in SHAPES]
        return [np.abs(x) if positive else x for x in out]

    grads, params = one(1.0), one(1.0)
    state = [one(0.1) for _ in range(moments - 1)] + [one(0.01, positive=True)]
    return grads, params, state


def f32(x):
    return float(np.float32(x))


def numpy_adam(g, p, m, v, t, lr, b1, b2, eps, decay):
    """float64, from the formula of DESIGN.md (not the kernel's rearrangement)."""
    lr, b1, b2, eps, decay = (f32(x) for x in (lr, b1, b2, eps, decay))
    g, p, m, v = (x.astype(np.float64) for x in (g, p, m, v))
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return p - lr * (m_hat / (np.sqrt(v_hat) + eps) + decay * p), m, v


def numpy_scaled(g, p, s, keep, add, lr, eps, eps_in_sqrt):
    keep, add, lr, eps = (f32(x) for x in (keep, add, lr, eps))
    g, p, s = (x.astype(np.float64) for x in (g, p, s))
    s = keep * s + add * g * g
    return p - lr * g / (np.sqrt(s + eps) if eps_in_sqrt else np.sqrt(s) + eps), s


def numpy_momentum(g, p, u, mu, lr, nesterov):
    mu, lr = f32(mu), f32(lr)
    g, p, u = (x.astype(np.float64) for x in (g, p, u))
    u = mu * u + g
    return p - lr * ((g + mu * u) if nesterov else u), u


# kind -> (function, target, moments, coef, float64 reference of one leaf (g, p, *state, flag))
CASES = {
    "adamw": (_multi.adam_multi, "fnn_adam_multi_f32", 2,
              lambda: _fused.adam_coefficients(jnp.int32(7), 3e-3, 0.9, 0.999, 1e-8, 0.05),
              lambda g, p, m, v, flag: numpy_adam(g, p, m, v, 7, 3e-3, 0.9, 0.999, 1e-8,
                                                  0.05 * flag)),
    "adam": (_multi.adam_multi, "fnn_adam_multi_f32", 2,
             lambda: _fused.adam_coefficients(jnp.int32(1), 1e-2, 0.9, 0.999, 1e-8),
             lambda g, p, m, v, flag: numpy_adam(g, p, m, v, 1, 1e-2, 0.9, 0.999, 1e-8, 0.0)),
    "adagrad": (_multi.scaled_multi, "fnn_scaled_multi_f32", 1,
                lambda: _fused.scaled_coefficients(1.0, 1.0, 1e-2, 1e-7, False),
                lambda g, p, s, flag: numpy_scaled(g, p, s, 1.0, 1.0, 1e-2, 1e-7, False)),
    "rmsprop_eps_in_sqrt": (_multi.scaled_multi, "fnn_scaled_multi_f32", 1,
                            lambda: _fused.scaled_coefficients(0.9, 0.1, 1e-3, 1e-8, True),
                            lambda g, p, s, flag: numpy_scaled(g, p, s, 0.9, 0.1, 1e-3, 1e-8,
                                                               True)),
    "momentum": (_multi.momentum_multi, "fnn_momentum_multi_f32", 1,
                 lambda: _fused.momentum_coefficients(0.9, 1e-2, False),
                 lambda g, p, u, flag: numpy_momentum(g, p, u, 0.9, 1e-2, False)),
    "nesterov": (_multi.momentum_multi, "fnn_momentum_multi_f32", 1,
                 lambda: _fused.momentum_coefficients(0.9, 1e-2, True),
                 lambda g, p, u, flag: numpy_momentum(g, p, u, 0.9, 1e-2, True)),
}


def custom_calls(compiled_text, target):
    entry = compiled_text[compiled_text.index("ENTRY"):]
    return entry.count(f'custom_call_target="{target}"')


def test_the_multi_kernels_build_and_register():
    assert _native.available()
    for target in ("fnn_adam_multi_f32", "fnn_scaled_multi_f32", "fnn_momentum_multi_f32"):
        assert target in _native.TARGETS


@pytest.mark.parametrize("kind", list(CASES))
def test_one_call_steps_every_leaf_like_a_float64_numpy_reference(kind):
    fn, target, moments, make_coef, numpy_step = CASES[kind]
    grads, params, state = leaves(hash(kind) % 1000, moments)
    coef = make_coef()
    step = jax.jit(fn)
    compiled = step.lower(coef, FLAGS, grads, params, *state).compile().as_text()
    assert custom_calls(compiled, target) == 1  # one call for the whole list
    new = step(coef, FLAGS, grads, params, *state)
    assert len(new) == 1 + moments and all(len(x) == len(SHAPES) for x in new)
    for i, shape in enumerate(SHAPES):
        got = [np.asarray(x[i], np.float64) for x in new]
        assert all(x.shape == shape and np.dtype(new[k][i].dtype) == np.float32
                   for k, x in enumerate(got))
        ref = numpy_step(grads[i], params[i], *(s[i] for s in state), float(FLAGS[i]))
        p, olds = params[i].astype(np.float64), [s[i] for s in state]
        # The step itself (p_new − p) to float32 accuracy, beyond p's own rounding.
        step_err = np.abs((got[0] - p) - (ref[0] - p))
        bound = 2e-5 * np.abs(ref[0] - p) + 2 * np.spacing(np.abs(params[i]))
        assert np.all(step_err <= bound), (kind, shape, np.max(step_err - bound))
        # Moments: a few float32 roundings of the two terms (they may cancel).
        for got_s, ref_s, old in zip(got[1:], ref[1:], olds):
            scale = np.abs(old) + np.square(grads[i]) + np.abs(grads[i])
            assert np.all(np.abs(got_s - ref_s) <= 4 * F32_ULP * scale), (kind, shape)


def test_decay_flags_switch_weight_decay_per_leaf():
    """With flags 0 a leaf gets plain Adam; with 1, AdamW's decay; None means all 1."""
    grads, params, state = leaves(5, 2)
    decayed = _fused.adam_coefficients(jnp.int32(3), 1e-2, 0.9, 0.999, 1e-8, 0.5)
    plain = _fused.adam_coefficients(jnp.int32(3), 1e-2, 0.9, 0.999, 1e-8, 0.0)
    step = jax.jit(_multi.adam_multi)
    mixed = step(decayed, FLAGS, grads, params, *state)
    off = step(plain, FLAGS, grads, params, *state)
    on = step(decayed, np.ones_like(FLAGS), grads, params, *state)
    default = jax.jit(lambda c, *a: _multi.adam_multi(c, None, *a))(decayed, grads, params, *state)
    for i, flag in enumerate(FLAGS):
        expected = on[0][i] if flag else off[0][i]
        np.testing.assert_array_equal(mixed[0][i], expected)
        np.testing.assert_array_equal(default[0][i], on[0][i])
        if flag and params[i].size:  # the decay really changed something
            assert not np.array_equal(on[0][i], off[0][i])


@pytest.mark.parametrize("kind", ["adamw", "rmsprop_eps_in_sqrt", "nesterov"])
def test_the_jnp_fallback_equals_the_kernel(kind, monkeypatch):
    """FNN_FUSED=0 runs the reference formulas (no custom call) with the same numbers,
    and a program lowered for another platform holds no kernel call."""
    fn, target, moments, make_coef, _ = CASES[kind]
    grads, params, state = leaves(11, moments)
    coef = make_coef()
    fused = jax.jit(fn)(coef, FLAGS, grads, params, *state)
    monkeypatch.setenv("FNN_FUSED", "0")
    fallback_step = jax.jit(lambda *a: fn(*a))
    assert target not in fallback_step.lower(coef, FLAGS, grads, params, *state).as_text()
    fallback = fallback_step(coef, FLAGS, grads, params, *state)
    for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(fallback)):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    monkeypatch.setenv("FNN_FUSED", "1")
    # platform_dependent: lowered for a GPU the kernel is not in the program.
    try:
        other = jax.jit(lambda *a: fn(*a)).trace(coef, FLAGS, grads, params, *state).lower(
            lowering_platforms=("cuda",)).as_text()
    except Exception as error:  # noqa: BLE001 - a jaxlib without CUDA lowering rules
        pytest.skip(f"cannot lower for cuda here: {error}")
    assert target not in other


def test_eager_calls_work_and_equal_jitted_ones():
    grads, params, state = leaves(2, 1)
    coef = _fused.momentum_coefficients(0.9, 1e-2, True)
    eager = _multi.momentum_multi(coef, None, grads, params, *state)
    jitted = jax.jit(_multi.momentum_multi)(coef, None, grads, params, *state)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_array_equal(a, b)


def test_vmap_over_learning_rates_equals_separate_calls():
    grads, params, state = leaves(3, 2)
    rates = jnp.asarray([1e-3, 1e-2, 3e-2], jnp.float32)
    coefs = jax.vmap(lambda lr: _fused.adam_coefficients(jnp.int32(2), lr, 0.9, 0.999, 1e-8,
                                                         0.1))(rates)
    batched = jax.jit(jax.vmap(_multi.adam_multi, in_axes=(0, None, None, None, None, None)))(
        coefs, FLAGS, grads, params, *state)
    step = jax.jit(_multi.adam_multi)
    for j in range(len(rates)):
        alone = step(coefs[j], FLAGS, grads, params, *state)
        for k in range(3):
            for i in range(len(SHAPES)):
                assert batched[k][i].shape == (3, *SHAPES[i])
                np.testing.assert_allclose(batched[k][i][j], alone[k][i], rtol=2e-6, atol=1e-7)


def test_derivatives_equal_those_of_the_per_leaf_formula():
    """jax.grad and jvp (meta-learning through a step) use the reference formula."""
    grads, params, state = leaves(4, 2)
    coef = _fused.adam_coefficients(jnp.int32(2), 1e-2, 0.9, 0.999, 1e-8, 0.1)

    def loss_multi(params, coef):
        new, m, _ = _multi.adam_multi(coef, FLAGS, grads, params, *state)
        return sum(jnp.sum(p**2) + jnp.sum(x) for p, x in zip(new, m))

    def loss_per_leaf(params, coef):
        total = 0.0
        for i, p in enumerate(params):
            c = coef.at[7].multiply(FLAGS[i])
            new, m, _ = _fused.adam_reference(c, grads[i], p, state[0][i], state[1][i])
            total = total + jnp.sum(new**2) + jnp.sum(m)
        return total

    got = jax.jit(jax.grad(loss_multi, argnums=(0, 1)))(params, coef)
    want = jax.jit(jax.grad(loss_per_leaf, argnums=(0, 1)))(params, coef)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.any(np.asarray(got[1]) != 0)  # the coefficients' gradient flows too
    tangent = [jnp.ones_like(p) for p in params]
    _, jvp_out = jax.jit(lambda p, t: jax.jvp(lambda q: loss_multi(q, coef), (p,), (t,)))(
        params, tangent)
    np.testing.assert_allclose(jvp_out, sum(np.sum(g) for g in got[0]), rtol=1e-5)


def test_a_donated_call_steps_params_and_moments_in_place():
    """The results reuse the donated buffers, and the compiled program copies no leaf."""
    grads, params, state = leaves(6, 2)
    coef = _fused.adam_coefficients(jnp.int32(1), 1e-2, 0.9, 0.999, 1e-8, 0.1)
    step = jax.jit(_multi.adam_multi, donate_argnums=(3, 4, 5))
    # Copies owned by XLA (a device_put of a NumPy array may share the NumPy buffer on the
    # CPU, which is never donated).
    params, m, v = ([jnp.array(a, copy=True) for a in x] for x in (params, *state))
    compiled = step.lower(coef, FLAGS, grads, params, m, v).compile().as_text()
    entry = compiled[compiled.index("ENTRY"):]
    assert custom_calls(compiled, "fnn_adam_multi_f32") == 1
    assert "output_to_operand_aliasing" in entry
    copies = [line for line in entry.splitlines() if " copy(" in line
              and not line.split("=")[1].strip().startswith("f32[0")]  # empty leaves only
    assert not copies, copies
    before = [x.unsafe_buffer_pointer() for x in (*params, *m, *v) if x.size]
    new = step(coef, FLAGS, grads, params, m, v)
    after = [x.unsafe_buffer_pointer() for x in (*new[0], *new[1], *new[2]) if x.size]
    assert before == after


def test_clear_errors_name_the_wrong_leaf():
    g, p, (s,) = leaves(8, 1)
    coef = _fused.scaled_coefficients(1.0, 1.0, 1e-2, 1e-7, False)
    with pytest.raises(ValueError, match=r"grads has 7 leaves but params has 8"):
        _multi.scaled_multi(coef, None, g[:-1], p, s)
    with pytest.raises(TypeError, match=r"params\[2\] has dtype bfloat16"):
        _multi.scaled_multi(coef, None, g, [*p[:2], jnp.asarray(p[2], jnp.bfloat16), *p[3:]], s)
    with pytest.raises(ValueError, match=r"moments\[0\]\[3\] has shape \(8,\)"):
        _multi.scaled_multi(coef, None, g, p, [*s[:3], np.zeros(8, np.float32), *s[4:]])
    with pytest.raises(ValueError, match=r"decay_flags must have one entry per leaf"):
        _multi.scaled_multi(coef, np.ones(3), g, p, s)
    with pytest.raises(ValueError, match=r"coef must have shape \(5,\)"):
        _multi.scaled_multi(coef[:3], None, g, p, s)
    with pytest.raises(TypeError, match=r"params must be a list or tuple"):
        _multi.scaled_multi(coef, None, g, {"a": p[0]}, s)
    assert _multi.scaled_multi(coef, None, [], [], []) == ([], [])


def test_long_lists_are_split_into_calls_of_bounded_size(monkeypatch):
    """Beyond LEAVES_PER_CALL non-empty leaves the list takes several calls, same numbers."""
    grads, params, state = leaves(9, 2)
    coef = _fused.adam_coefficients(jnp.int32(4), 1e-2, 0.9, 0.999, 1e-8, 0.1)
    whole = jax.jit(_multi.adam_multi)(coef, FLAGS, grads, params, *state)
    monkeypatch.setattr(_multi, "LEAVES_PER_CALL", 2)
    step = jax.jit(lambda *a: _multi.adam_multi(*a))
    compiled = step.lower(coef, FLAGS, grads, params, *state).compile().as_text()
    live = sum(1 for s in SHAPES if np.prod(s, dtype=int) > 0)
    assert custom_calls(compiled, "fnn_adam_multi_f32") == -(-live // 2)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(step(coef, FLAGS, grads, params,
                                                                   *state))):
        np.testing.assert_array_equal(a, b)
