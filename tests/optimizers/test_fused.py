"""The one-pass CPU optimizer kernels (optimizers/_fused.py, _kernels/steps.cc) behind
``optimizers.step``.

It must change speed only: ``optimizers.step`` gives the numbers of ``update`` +
``apply_updates`` (float tolerance), under jit, vmap, grad, wrappers, packing and
sharding, and a clear fallback where it cannot be built; ``update`` itself is
the exact rule and never runs a kernel.
"""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt
from optimizers import _fused, _multi

N = _fused.CHUNK + 123  # more than one chunk of the kernels (2^16), and not a multiple of it


def one_leaf(multi):
    """``step(coef, g, p, *moments) -> (p_new, *moments_new)``: the multi-tensor kernel
    ``multi`` (:mod:`optimizers._multi`) on a list of one leaf, decay flag 1."""
    def step(coef, g, p, *moments):
        return tuple(x[0] for x in multi(coef, None, [g], [p], *([m] for m in moments)))
    return step


adam_one_leaf = one_leaf(_multi.adam_multi)
scaled_one_leaf = one_leaf(_multi.scaled_multi)
momentum_one_leaf = one_leaf(_multi.momentum_multi)


def arrays(seed, n=N):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=n).astype(np.float32)
    p = rng.normal(size=n).astype(np.float32)
    m = (0.1 * rng.normal(size=n)).astype(np.float32)
    v = (0.01 * rng.random(size=n)).astype(np.float32)
    return g, p, m, v


def numpy_adam(g, p, m, v, t, lr, b1, b2, eps, weight_decay, bias_correction):
    """float64, written from DESIGN.md's formula (not from the kernel's rearrangement).

    The hyperparameters are first rounded to float32, as any float32 run stores them.
    """
    lr, b1, b2, eps, weight_decay = (float(np.float32(x)) for x in (lr, b1, b2, eps, weight_decay))
    g, p, m, v = (x.astype(np.float64) for x in (g, p, m, v))
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
    return p - lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * p), m, v


def test_the_kernel_builds_on_this_machine():
    """CI machines have a C++ compiler: the fast path must really be in use there."""
    assert _fused.available()
    assert _fused.eligible(*(jnp.zeros(N, jnp.float32),) * 4)


def test_eligibility():
    """Float32 leaves of any size, scalars included; never another dtype, a mixed leaf or
    a leaf without params."""
    big, small = jnp.zeros(N, jnp.float32), jnp.zeros(100, jnp.float32)
    assert _fused.eligible(small, small, small, small)
    assert _fused.eligible(*(jnp.float32(1.0),) * 3)
    assert not _fused.eligible(small, big, small, small)  # shapes differ
    assert not _fused.eligible(big, None, big, big)
    for dtype in (jnp.bfloat16, jnp.float16, jnp.float64):
        x = jnp.zeros(N, dtype)
        assert not _fused.eligible(x, x, x, x), dtype
    assert not _fused.eligible(big, big, big.astype(jnp.bfloat16), big)


@pytest.mark.parametrize("t, weight_decay, bias_correction",
                         [(1, 0.0, True), (1000, 0.0, True), (7, 0.05, True), (3, 0.0, False)])
def test_kernel_matches_a_float64_numpy_reference(t, weight_decay, bias_correction):
    g, p, m, v = arrays(t)
    hp = dict(lr=3e-3, b1=0.9, b2=0.999, eps=1e-8)
    coef = _fused.adam_coefficients(jnp.int32(t), hp["lr"], hp["b1"], hp["b2"], hp["eps"],
                                    weight_decay, bias_correction)
    step = jax.jit(adam_one_leaf)
    assert "fnn_adam_multi_f32" in step.lower(coef, g, p, m, v).as_text()
    new = [np.asarray(x, np.float64) for x in step(coef, g, p, m, v)]
    ref = numpy_adam(g, p, m, v, t, weight_decay=weight_decay,
                     bias_correction=bias_correction, **hp)
    # Moments: a few float32 roundings of the two terms (they may cancel).
    ulp = np.finfo(np.float32).eps
    assert np.all(np.abs(new[1] - ref[1]) <= 4 * ulp * (np.abs(m) + np.abs(g)))
    assert np.all(np.abs(new[2] - ref[2]) <= 4 * ulp * (np.abs(v) + np.square(g)))
    # The step itself (p_new - p) to float32 accuracy, beyond p's own rounding.
    step_err = np.abs((new[0] - p) - (ref[0] - p))
    assert np.all(step_err <= 1e-5 * np.abs(ref[0] - p) + 2 * np.spacing(np.abs(p).astype(np.float32)))
    # ... and the jnp twin used off the CPU, under vmap and for derivatives agrees.
    twin = [np.asarray(x, np.float64) for x in jax.jit(_fused.adam_reference)(coef, g, p, m, v)]
    for a, b in zip(new, twin):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("keep, add, eps, eps_in_sqrt",
                         [(1.0, 1.0, 1e-7, False), (1.0, 1.0, 1e-7, True),
                          (0.9, 0.1, 1e-8, False), (0.99, 0.01, 1e-8, True)])
def test_scaled_kernel_matches_a_float64_numpy_reference(keep, add, eps, eps_in_sqrt):
    """AdaGrad (keep = add = 1) and RMSProp (keep = ρ, add = 1 − ρ), both ε conventions."""
    g, p, _, s = arrays(11)
    lr = 1e-2
    coef = _fused.scaled_coefficients(keep, add, lr, eps, eps_in_sqrt)
    step = jax.jit(scaled_one_leaf)
    assert "fnn_scaled_multi_f32" in step.lower(coef, g, p, s).as_text()
    new_p, new_s = (np.asarray(x, np.float64) for x in step(coef, g, p, s))
    keep, add, lr, eps = (float(np.float32(x)) for x in (keep, add, lr, eps))
    g64, p64, s64 = (x.astype(np.float64) for x in (g, p, s))
    ref_s = keep * s64 + add * g64 * g64
    ref_p = p64 - lr * g64 / (np.sqrt(ref_s + eps) if eps_in_sqrt else np.sqrt(ref_s) + eps)
    ulp = np.finfo(np.float32).eps
    assert np.all(np.abs(new_s - ref_s) <= 4 * ulp * ref_s)
    step_err = np.abs((new_p - p64) - (ref_p - p64))
    assert np.all(step_err <= 1e-5 * np.abs(ref_p - p64) + 2 * np.spacing(np.abs(p)))
    twin = jax.jit(_fused.scaled_reference)(coef, g, p, s)
    np.testing.assert_allclose(new_p, twin[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new_s, twin[1], rtol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_kernel_matches_a_float64_numpy_reference(nesterov):
    g, p, u, _ = arrays(12)
    mu, lr = 0.9, 1e-2
    coef = _fused.momentum_coefficients(mu, lr, nesterov)
    step = jax.jit(momentum_one_leaf)
    assert "fnn_momentum_multi_f32" in step.lower(coef, g, p, u).as_text()
    new_p, new_u = (np.asarray(x, np.float64) for x in step(coef, g, p, u))
    mu, lr = float(np.float32(mu)), float(np.float32(lr))
    g64, p64, u64 = (x.astype(np.float64) for x in (g, p, u))
    ref_u = mu * u64 + g64
    ref_p = p64 - lr * (g64 + mu * ref_u if nesterov else ref_u)
    ulp = np.finfo(np.float32).eps
    assert np.all(np.abs(new_u - ref_u) <= 4 * ulp * (np.abs(u64) + np.abs(g64)))
    step_err = np.abs((new_p - p64) - (ref_p - p64))
    assert np.all(step_err <= 1e-5 * np.abs(ref_p - p64) + 4 * ulp * np.abs(lr * (np.abs(g64) + np.abs(u64)))
                  + 2 * np.spacing(np.abs(p)))
    twin = jax.jit(_fused.momentum_reference)(coef, g, p, u)
    np.testing.assert_allclose(new_p, twin[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new_u, twin[1], rtol=1e-6, atol=1e-7)


def big_tree(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    return {"w": jax.random.normal(k[0], (256, 300), jnp.float32),   # 76,800 > CHUNK
            "b": jax.random.normal(k[1], (300,), jnp.float32)}      # small: same call


def grads_at(params, i):
    return jax.tree_util.tree_map(lambda x: jnp.sin(3 * x + i) + 0.1 * x, params)


def run(tx, steps=15, params=None, fast=True):
    """``steps`` jitted steps: ``optimizers.step`` if ``fast``, else update + apply_updates."""
    params = big_tree() if params is None else params
    state = tx.init(params)

    @jax.jit
    def step(params, state, i):
        if fast:
            return opt.step(tx, grads_at(params, i), state, params)
        updates, state = tx.update(grads_at(params, i), state, params)
        return opt.apply_updates(params, updates), state

    for i in range(steps):
        params, state = step(params, state, i)
    return params, state, step


CONFIGS = {
    "momentum": lambda: opt.momentum(1e-2, 0.9),
    "nesterov": lambda: opt.momentum(1e-2, 0.9, nesterov=True),
    "adagrad": lambda: opt.adagrad(1e-2),
    "adagrad_optax_eps": lambda: opt.adagrad(1e-2, initial_accumulator=0.1, eps_in_sqrt=True),
    "rmsprop": lambda: opt.rmsprop(1e-3, decay=0.9),
    "rmsprop_optax_eps": lambda: opt.rmsprop(1e-3, decay=0.9, eps_in_sqrt=True),
    "adam": lambda: opt.adam(1e-2),
    "adam_no_bias_correction": lambda: opt.adam(1e-2, bias_correction=False),
    "adam_schedule": lambda: opt.adam(opt.schedules.cosine_decay(1e-2, 20)),
    "adamw_masked": lambda: opt.adamw(1e-2, weight_decay=0.1,
                                      mask={"w": True, "b": False}),
    "chain": lambda: opt.chain(opt.clip_by_global_norm(1.0), opt.adam(1e-2)),
    "skip_nonfinite": lambda: opt.skip_nonfinite(opt.adamw(1e-2)),
    "accumulate": lambda: opt.accumulate(opt.adam(1e-2), every=3),
    "switch": lambda: opt.switch(opt.sgd(1e-2), opt.adam(1e-2)),
    "masked": lambda: opt.masked(opt.momentum(1e-2, 0.9), {"w": True, "b": False}),
    "masked_transform": lambda: opt.chain(
        opt.masked(opt.clip(0.5), {"w": False, "b": True}), opt.rmsprop(1e-3)),
    "partition": lambda: opt.partition({"a": opt.adagrad(1e-2), "f": opt.freeze()},
                                       {"w": "a", "b": "f"}),
}


def kernels_in(step, tx):
    text = step.lower(big_tree(), tx.init(big_tree()), 0).as_text()
    return [t for t in _fused.STEP_TARGETS if t in text]


@pytest.mark.parametrize("name", CONFIGS)
def test_fused_steps_equal_the_plain_rule(name):
    """optimizers.step (kernels) == update + apply_updates (the plain rule, no kernel)."""
    fused_params, fused_state, step = run(CONFIGS[name]())
    text = step.lower(big_tree(), CONFIGS[name]().init(big_tree()), 0).as_text()
    assert sum(text.count(t) for t in _fused.STEP_TARGETS) >= 1
    plain_params, plain_state, step = run(CONFIGS[name](), fast=False)
    assert not kernels_in(step, CONFIGS[name]())
    for a, b in zip(jax.tree_util.tree_leaves((fused_params, fused_state)),
                    jax.tree_util.tree_leaves((plain_params, plain_state))):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=2e-5, atol=2e-6)


def test_variants_without_a_kernel_run_the_plain_rule():
    """Centered RMSProp and RMSProp with momentum keep more moments than the kernel."""
    for tx in (opt.rmsprop(1e-3, centered=True), opt.rmsprop(1e-3, momentum=0.9)):
        _, _, step = run(tx, steps=1)
        assert not kernels_in(step, tx)


@pytest.mark.parametrize("tx, target", [(opt.adam(1e-3), "fnn_adam_multi_f32"),
                                        (opt.adagrad(1e-3), "fnn_scaled_multi_f32"),
                                        (opt.momentum(1e-3, 0.9), "fnn_momentum_multi_f32")])
def test_a_donated_step_is_one_pass_in_place(tx, target):
    """One custom call updates p and moments in place; no XLA loop re-reads the big arrays."""
    params = {"w": jnp.zeros((512, 512), jnp.float32)}

    def step(params, state, grads):
        return opt.step(tx, grads, state, params)

    hlo = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), params)
    text = hlo.compile().as_text()
    entry = text[text.index("ENTRY"):]
    assert entry.count(f'custom_call_target="{target}"') == 1
    assert "output_to_operand_aliasing" in entry
    big_fusions = [line for line in entry.splitlines()
                   if "f32[512,512]" in line.split("=")[1 if "=" in line else 0] and "fusion(" in line]
    assert not big_fusions, big_fusions  # the update p_new - p and its re-add are dead code


WRAPPED = {
    "skip_nonfinite": lambda: opt.skip_nonfinite(opt.adam(1e-3)),
    "accumulate": lambda: opt.accumulate(opt.adam(1e-3), every=4),
    "switch": lambda: opt.switch(opt.sgd(0.1), opt.adam(1e-3)),
    "chain": lambda: opt.chain(opt.clip_by_global_norm(1.0), opt.adam(1e-3)),
}


@pytest.mark.parametrize("name", WRAPPED)
def test_a_donated_wrapped_step_copies_no_array(name):
    """Under skip_nonfinite, accumulate, switch and chain the donated step still writes
    params and moments in place: XLA inserts no copy of any array (a lax.cond/switch
    that passes buffers through in another order than it gets them makes it copy them)."""
    tx = WRAPPED[name]()
    params = {"w": jnp.zeros((512, 512), jnp.float32), "b": jnp.zeros((300,), jnp.float32)}

    def step(params, state, grads):
        return opt.step(tx, grads, state, params)

    text = jax.jit(step, donate_argnums=(0, 1)).lower(
        params, tx.init(params), params).compile().as_text()
    assert "fnn_adam_multi_f32" in text
    copies = [line.strip() for line in text.splitlines()
              if " copy(" in line and "[]" not in line.split(" copy(")[0]]
    assert not copies, copies


def test_switch_step_follows_the_index_at_run_time():
    """One compiled donated step: each index steps with its own optimizer (as that
    optimizer's update + apply_updates would) and keeps the other states bit for bit; a
    traced index naming no optimizer gives NaN params and keeps every state."""
    choices = [opt.sgd(1e-2), opt.momentum(1e-2, 0.9), opt.adam(1e-2)]
    tx = opt.switch(*choices)
    params = big_tree()
    grads = grads_at(params, 0)
    traces = []

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state):
        traces.append(1)
        return opt.step(tx, grads, state, params)

    for index, alone in enumerate(choices + [None, None]):
        index = {3: len(choices), 4: -1}.get(index, index)
        state = tx.init(params)._replace(index=jnp.int32(index))
        kept = jax.tree_util.tree_map(np.asarray, state.states)
        new_params, new_state = step(jax.tree_util.tree_map(jnp.copy, params), state)
        if alone is None:
            assert all(bool(jnp.all(jnp.isnan(x))) for x in jax.tree_util.tree_leaves(new_params))
            changed = []
        else:
            updates, expected = alone.update(grads, alone.init(params), params)
            for a, b in zip(jax.tree_util.tree_leaves((new_params, new_state.states[index])),
                            jax.tree_util.tree_leaves((opt.apply_updates(params, updates),
                                                       expected))):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-7)
            changed = [index]
        for i, (a, b) in enumerate(zip(new_state.states, kept)):
            if i not in changed:
                for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
                    np.testing.assert_array_equal(np.asarray(x), y)
    assert len(traces) == 1


def test_accumulate_step_applies_every_kth_call():
    """Calls 1..k−1 only add the gradients into the sum (params and inner state bit for
    bit kept, the sum equal to the float64 sum); call k steps with the mean and restarts."""
    every = 3
    inner = opt.adam(1e-2)
    tx = opt.accumulate(inner, every=every)
    params = big_tree()
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: opt.step(tx, g, s, p), donate_argnums=(0, 1))
    start = jax.tree_util.tree_map(np.asarray, params)
    grads = [grads_at(params, i) for i in range(every)]
    total = jax.tree_util.tree_map(lambda *g: np.sum([np.asarray(x, np.float64) for x in g], 0),
                                   *grads)
    current = jax.tree_util.tree_map(jnp.copy, params)
    for i, g in enumerate(grads[:-1]):
        current, state = step(current, state, g)
        assert int(state.mini_step) == i + 1 and int(state.inner.count) == 0
        for x, y in zip(jax.tree_util.tree_leaves(current), jax.tree_util.tree_leaves(start)):
            np.testing.assert_array_equal(np.asarray(x), y)
    partial = jax.tree_util.tree_map(lambda *g: np.sum([np.asarray(x, np.float64) for x in g], 0),
                                     *grads[:-1])
    for x, y in zip(jax.tree_util.tree_leaves(state.grad_sum), jax.tree_util.tree_leaves(partial)):
        np.testing.assert_allclose(np.asarray(x), y, rtol=1e-6, atol=1e-6)
    current, state = step(current, state, grads[-1])
    assert int(state.mini_step) == 0 and int(state.inner.count) == 1
    assert all(not np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(state.grad_sum))
    # Adam's first step on the mean gradient, from DESIGN.md's formula in float64
    for key in ("w", "b"):
        mean = total[key] / every
        zeros = np.zeros_like(mean)
        expected = numpy_adam(mean, start[key], zeros, zeros, 1, 1e-2, 0.9, 0.999, 1e-8, 0.0,
                              True)[0]
        np.testing.assert_allclose(np.asarray(current[key], np.float64), expected,
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lr", [1e-4, 1e-5, 1e-6])
def test_update_is_the_exact_rule_for_large_leaves(lr):
    """update returns the rule's update itself (not p_new − p, rounded to the ulp of p):
    relative error ~1e-7 against float64 NumPy at any learning rate, and no kernel runs."""
    params = big_tree()
    tx = opt.adamw(lr, weight_decay=0.05)
    grads = grads_at(params, 0)
    update = jax.jit(tx.update)
    assert not [t for t in _fused.STEP_TARGETS
                if t in update.lower(grads, tx.init(params), params).as_text()]
    updates, _ = update(grads, tx.init(params), params)
    g, p = (np.asarray(x["w"]) for x in (grads, params))
    zeros = np.zeros_like(g)
    ref = numpy_adam(g, p, zeros, zeros, 1, lr, 0.9, 0.999, 1e-8, 0.05, True)[0] - p
    got = np.asarray(updates["w"], np.float64)
    assert np.max(np.abs(got - ref) / np.abs(ref)) < 1e-6


def test_vmap_over_learning_rates_equals_separate_runs():
    params = big_tree()
    tx = opt.adam(1e-2)
    rates = jnp.asarray([1e-3, 1e-2, 3e-2], jnp.float32)
    states = jax.vmap(lambda lr: opt.set_hyperparams(tx.init(params), learning_rate=lr))(rates)

    def step(params, state):
        return opt.step(tx, grads_at(params, 0), state, params)

    batched, _ = jax.jit(jax.vmap(step, in_axes=(None, 0)))(params, states)
    for i, lr in enumerate(rates):
        alone, _ = jax.jit(step)(params, opt.set_hyperparams(tx.init(params), learning_rate=lr))
        np.testing.assert_allclose(batched["w"][i], alone["w"], rtol=1e-6, atol=1e-7)


def test_derivatives_through_the_step():
    """jax.grad through an Adam step (meta-learning) works and equals the plain rule's."""
    params = big_tree()
    tx = opt.adam(1e-2)
    state = tx.init(params)
    _, state = jax.jit(tx.update)(grads_at(params, 0), state, params)  # count = 1

    def outcome(params, fast):
        if fast:
            new, _ = opt.step(tx, grads_at(params, 1), state, params)
        else:
            updates, _ = tx.update(grads_at(params, 1), state, params)
            new = opt.apply_updates(params, updates)
        return jnp.sum(new["w"] ** 2)

    fused = jax.jit(jax.grad(outcome), static_argnums=1)(params, True)
    reference = jax.jit(jax.grad(outcome), static_argnums=1)(params, False)
    np.testing.assert_allclose(fused["w"], reference["w"], rtol=1e-4, atol=1e-5)


def test_nan_gradient_is_skipped_without_touching_params_or_moments():
    params = big_tree()
    tx = opt.skip_nonfinite(opt.adam(1e-2))
    state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        return opt.step(tx, grads, state, params)

    params, state = step(params, state, grads_at(params, 0))
    params, state = jax.tree_util.tree_map(jnp.copy, (params, state))  # kept: the next donates
    bad = jax.tree_util.tree_map(lambda g: g.at[5].set(jnp.nan), grads_at(params, 1))
    kept = jax.tree_util.tree_map(np.asarray, (params, state))
    new_params, new_state = step(params, state, bad)
    assert int(new_state.skipped) == 1
    for a, b in zip(jax.tree_util.tree_leaves((kept[0], kept[1].inner)),
                    jax.tree_util.tree_leaves((new_params, new_state.inner))):
        np.testing.assert_array_equal(a, b)


def test_packed_buffers_take_the_kernel():
    params = big_tree()
    packed = opt.pack(params)
    fused, _, step = run(opt.adam(1e-2), params=packed)
    assert "fnn_adam_multi_f32" in step.lower(packed, opt.adam(1e-2).init(packed), 0).as_text()
    reference, _, _ = run(opt.adam(1e-2), params=params, fast=False)
    np.testing.assert_allclose(opt.unpack(fused)["w"], reference["w"], rtol=2e-5, atol=2e-6)


def _subprocess(script, **env):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                         text=True, env={**os.environ, "JAX_PLATFORMS": "cpu", **env}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_sharded_params_stay_sharded():
    """On a mesh each device steps its own shard: no all-gather, shardings kept."""
    out = _subprocess("""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import optimizers as opt
        mesh = Mesh(np.array(jax.devices()), ("x",))
        rows = NamedSharding(mesh, P("x"))
        w = jax.random.normal(jax.random.key(0), (512, 256))
        params = {"w": jax.device_put(w, rows)}
        grads = {"w": jax.device_put(jnp.cos(w), rows)}
        tx = opt.adam(1e-2)
        @jax.jit
        def step(p, s, g):
            return opt.step(tx, g, s, p)
        new, state = step(params, tx.init(params), grads)
        text = step.lower(params, tx.init(params), grads).compile().as_text()
        assert "fnn_adam_multi_f32" in text and "all-gather" not in text, text[-3000:]
        assert new["w"].sharding.spec == P("x"), new["w"].sharding
        assert state.mu["w"].sharding.spec == P("x"), state.mu["w"].sharding
        alone, _ = step({"w": w}, tx.init({"w": w}), {"w": jnp.cos(w)})
        np.testing.assert_allclose(new["w"], alone["w"], rtol=1e-6, atol=1e-7)
        print("ok")
    """)
    assert out.stdout.strip().endswith("ok")


@pytest.mark.parametrize("kernel", ["adam", "scaled", "scaled_in_sqrt"])
def test_kernels_with_zero_eps_give_zero_steps_where_the_gradient_is_zero(kernel):
    """ε = 0 and g = m = v = 0 is 0/0: the kernels and their jnp twins define it as no step
    (the limit), where the float64 NumPy reference, written from the formula, is finite."""
    g, p, m, v = arrays(21)
    zero = np.arange(N) % 3 == 0
    g, m, v = (np.where(zero, 0, x).astype(np.float32) for x in (g, m, v))
    if kernel == "adam":
        coef = _fused.adam_coefficients(jnp.int32(3), 1e-2, 0.9, 0.999, 0.0)
        step, twin, target, inputs = (adam_one_leaf, _fused.adam_reference,
                                      "fnn_adam_multi_f32", (g, p, m, v))
        with np.errstate(divide="ignore", invalid="ignore"):
            ref_p = numpy_adam(g, p, m, v, 3, 1e-2, 0.9, 0.999, 0.0, 0.0, True)[0]
    else:
        in_sqrt = kernel == "scaled_in_sqrt"
        coef = _fused.scaled_coefficients(0.9, 0.1, 1e-2, 0.0, in_sqrt)
        step, twin, target, inputs = (scaled_one_leaf, _fused.scaled_reference,
                                      "fnn_scaled_multi_f32", (g, p, v))
        s = 0.9 * v.astype(np.float64) + 0.1 * g.astype(np.float64) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            ref_p = p - float(np.float32(1e-2)) * g / np.sqrt(s)
    ref_p = np.where(zero, p, ref_p)  # 0/0 := 0: no step
    jitted = jax.jit(step)
    assert target in jitted.lower(coef, *inputs).as_text()
    for run in (jitted, jax.jit(twin)):
        new_p = np.asarray(run(coef, *inputs)[0], np.float64)
        assert np.all(np.isfinite(new_p))
        np.testing.assert_array_equal(new_p[zero], p[zero])
        np.testing.assert_allclose(new_p, ref_p, rtol=1e-5, atol=1e-6)
