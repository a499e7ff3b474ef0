"""Every optimizer against an independent float64 NumPy implementation of DESIGN.md's formulas.

The references below are written from the formulas alone (no code shared with
the package): a loop over steps, NumPy arrays, float64. Each run is 200+ steps
on a random smooth problem whose gradient depends on the params, on a params
tree with several leaves.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt
from optimizers import schedules

STEPS = 200
RTOL = 1e-10


# ------------------------------------------------------------------ the problem


def make_problem(seed):
    """f(p) = Σ ½ a (p − c)² + Σ b sin(p) per leaf; returns (params0, numpy grad, …, jax grad).

    Learning rates are chosen so that 200 steps move the params well but stay
    away from the optimum: sign-like rules (RMSProp, Adam) bounce chaotically
    around an optimum, where float64 rounding differences grow without bound.
    """
    rng = np.random.default_rng(seed)
    shapes = {"w": (6, 4), "b": (4,), "deep": {"k": (3, 3, 2)}}
    flat = {"w": (6, 4), "b": (4,), "k": (3, 3, 2)}
    a = {k: rng.uniform(0.5, 2.0, s) for k, s in flat.items()}
    c = {k: rng.normal(size=s) for k, s in flat.items()}
    b = {k: rng.uniform(0.0, 0.5, s) for k, s in flat.items()}
    # start 2–4 away from c (≥ 1 from the optimum) in every coordinate
    p0 = {k: c[k] + rng.choice([-1, 1], s) * rng.uniform(2, 4, s) for k, s in flat.items()}

    def np_grad(p):
        return {k: a[k] * (p[k] - c[k]) + b[k] * np.cos(p[k]) for k in flat}

    def nest(d):
        return {"w": d["w"], "b": d["b"], "deep": {"k": d["k"]}}

    def flatten(tree):
        return {"w": tree["w"], "b": tree["b"], "k": tree["deep"]["k"]}

    def jax_grad(tree):
        p = flatten(tree)
        return nest({k: jnp.asarray(a[k]) * (p[k] - jnp.asarray(c[k]))
                     + jnp.asarray(b[k]) * jnp.cos(p[k]) for k in flat})

    assert jax.tree_util.tree_structure(nest(p0)) == jax.tree_util.tree_structure(
        jax.tree_util.tree_map(lambda s: 0, shapes, is_leaf=lambda x: isinstance(x, tuple)))
    return p0, np_grad, nest, flatten, jax_grad


def run_ours(tx, seed, steps=STEPS):
    p0, _, nest, flatten, jax_grad = make_problem(seed)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), nest(p0))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax_grad(params), state, params)
        return opt.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return {k: np.asarray(v) for k, v in flatten(params).items()}


def run_reference(rule, seed, steps=STEPS):
    """``rule(t, g, p, slots) -> new p``; slots is a per-leaf dict the rule may fill."""
    p0, np_grad, *_ = make_problem(seed)
    p = {k: v.copy() for k, v in p0.items()}
    slots = {k: {} for k in p}
    for t in range(1, steps + 1):
        g = np_grad(p)
        p = {k: rule(t, g[k], p[k], slots[k], k) for k in p}
    return p


def assert_close(ours, ref, rtol=RTOL):
    for k in ref:
        err = np.linalg.norm(ours[k] - ref[k]) / np.linalg.norm(ref[k])
        assert err <= rtol, f"leaf {k}: relative error {err:.3e} > {rtol:.0e}"


# ------------------------------------------------------------------ learning rates

def lr_constant(value):
    return value, lambda t: value


def lr_exponential(value, k):
    # schedule step counts from 0: step t (1-based) uses α₀ e^{−k (t−1)}
    return schedules.exponential_decay(value, k), lambda t: value * math.exp(-k * (t - 1))


def lr_warm_cosine(value, warm, total):
    def ref(t):
        s = t - 1
        if s < warm:
            return value * s / warm
        s -= warm
        return value * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    return schedules.warmup(schedules.cosine_decay(value, total), steps=warm), ref


LRS = {
    "constant": lambda v: lr_constant(v),
    "exponential": lambda v: lr_exponential(v, 0.01),
    "warmup_cosine": lambda v: lr_warm_cosine(v, 20, 150),
}


# ------------------------------------------------------------------ references


def ref_sgd(lr):
    def rule(t, g, p, s, k):
        return p - lr(t) * g
    return rule


def ref_momentum(lr, mu, nesterov):
    def rule(t, g, p, s, k):
        v = mu * s.get("v", np.zeros_like(p)) + g
        s["v"] = v
        return p - lr(t) * ((g + mu * v) if nesterov else v)
    return rule


def ref_adagrad(lr, eps, h0, eps_in_sqrt):
    def rule(t, g, p, s, k):
        h = s.get("h", np.full_like(p, h0)) + g * g
        s["h"] = h
        d = np.sqrt(h + eps) if eps_in_sqrt else np.sqrt(h) + eps
        return p - lr(t) * g / d
    return rule


def ref_rmsprop(lr, rho, eps, centered, mu, eps_in_sqrt):
    def rule(t, g, p, s, k):
        sq = rho * s.get("s", np.zeros_like(p)) + (1 - rho) * g * g
        s["s"] = sq
        var = sq
        if centered:
            a = rho * s.get("a", np.zeros_like(p)) + (1 - rho) * g
            s["a"] = a
            var = sq - a * a
        d = np.sqrt(var + eps) if eps_in_sqrt else np.sqrt(var) + eps
        if mu > 0:
            b = mu * s.get("b", np.zeros_like(p)) + g / d
            s["b"] = b
            return p - lr(t) * b
        return p - lr(t) * g / d
    return rule


def ref_adam(lr, b1, b2, eps, bias_correction=True, wd=0.0, decay_leaves=None):
    def rule(t, g, p, s, k):
        m = b1 * s.get("m", np.zeros_like(p)) + (1 - b1) * g
        v = b2 * s.get("v", np.zeros_like(p)) + (1 - b2) * g * g
        s["m"], s["v"] = m, v
        if bias_correction:
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        else:
            m_hat, v_hat = m, v
        new = p - lr(t) * m_hat / (np.sqrt(v_hat) + eps)
        if wd and (decay_leaves is None or k in decay_leaves):
            new = new - lr(t) * wd * p
        return new
    return rule


CASES = {
    "sgd": (lambda lr: opt.sgd(lr), lambda lr: ref_sgd(lr), 0.05),
    "momentum": (lambda lr: opt.momentum(lr, 0.9),
                 lambda lr: ref_momentum(lr, 0.9, False), 0.02),
    "nesterov": (lambda lr: opt.momentum(lr, momentum=0.8, nesterov=True),
                 lambda lr: ref_momentum(lr, 0.8, True), 0.02),
    "adagrad": (lambda lr: opt.adagrad(lr), lambda lr: ref_adagrad(lr, 1e-7, 0.0, False), 0.1),
    "adagrad_eps_in_sqrt": (
        lambda lr: opt.adagrad(lr, eps=1e-3, initial_accumulator=0.1, eps_in_sqrt=True),
        lambda lr: ref_adagrad(lr, 1e-3, 0.1, True), 0.1),
    "rmsprop": (lambda lr: opt.rmsprop(lr),
                lambda lr: ref_rmsprop(lr, 0.99, 1e-8, False, 0.0, False), 0.002),
    "rmsprop_centered": (lambda lr: opt.rmsprop(lr, decay=0.9, centered=True),
                         lambda lr: ref_rmsprop(lr, 0.9, 1e-8, True, 0.0, False), 0.002),
    "rmsprop_momentum": (lambda lr: opt.rmsprop(lr, momentum=0.5, eps=1e-6, eps_in_sqrt=True),
                         lambda lr: ref_rmsprop(lr, 0.99, 1e-6, False, 0.5, True), 0.002),
    "rmsprop_all": (lambda lr: opt.rmsprop(lr, decay=0.95, centered=True, momentum=0.7),
                    lambda lr: ref_rmsprop(lr, 0.95, 1e-8, True, 0.7, False), 0.001),
    "adam": (lambda lr: opt.adam(lr), lambda lr: ref_adam(lr, 0.9, 0.999, 1e-8), 0.005),
    "adam_options": (lambda lr: opt.adam(lr, b1=0.5, b2=0.9, eps=1e-4),
                     lambda lr: ref_adam(lr, 0.5, 0.9, 1e-4), 0.005),
    "adam_no_bias_correction": (lambda lr: opt.adam(lr, bias_correction=False),
                                lambda lr: ref_adam(lr, 0.9, 0.999, 1e-8, False), 0.01),
    "adamw": (lambda lr: opt.adamw(lr, weight_decay=0.1),
              lambda lr: ref_adam(lr, 0.9, 0.999, 1e-8, wd=0.1), 0.005),
    "adamw_masked": (
        lambda lr: opt.adamw(lr, weight_decay=0.5,
                             mask=lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p)),
        lambda lr: ref_adam(lr, 0.9, 0.999, 1e-8, wd=0.5, decay_leaves={"w", "k"}), 0.005),
}


@pytest.mark.parametrize("lr_kind", list(LRS))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_float64_reference(case, lr_kind):
    make_ours, make_ref, base_lr = CASES[case]
    ours_lr, ref_lr = LRS[lr_kind](base_lr)
    seed = sorted(CASES).index(case)
    ours = run_ours(make_ours(ours_lr), seed)
    ref = run_reference(make_ref(ref_lr), seed)
    p0 = make_problem(seed)[0]
    moved = max(np.abs(ref[k] - p0[k]).max() for k in ref)
    assert moved > 1e-2, "the reference barely moved; the test would not detect a wrong rule"
    assert_close(ours, ref)


def test_reference_differs_between_options():
    """The references are sensitive to the options they test (the test can fail)."""
    a = run_reference(ref_adam(lambda t: 0.05, 0.9, 0.999, 1e-8), 0, steps=20)
    b = run_reference(ref_adam(lambda t: 0.05, 0.9, 0.999, 1e-8, False), 0, steps=20)
    c = run_reference(ref_momentum(lambda t: 0.02, 0.9, True), 0, steps=20)
    d = run_reference(ref_momentum(lambda t: 0.02, 0.9, False), 0, steps=20)
    assert np.abs(a["w"] - b["w"]).max() > 1e-4
    assert np.abs(c["w"] - d["w"]).max() > 1e-4


def test_chain_clip_and_decay_matches_reference():
    """chain(clip_by_global_norm, add_decayed_weights, momentum) against NumPy."""
    max_norm, wd, lr, mu = 0.5, 0.01, 0.05, 0.9
    tx = opt.chain(opt.clip_by_global_norm(max_norm), opt.add_decayed_weights(wd),
                   opt.momentum(lr, mu))
    ours = run_ours(tx, 3)
    p0, np_grad, *_ = make_problem(3)
    p = {k: v.copy() for k, v in p0.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    clipped = 0
    for _ in range(STEPS):
        g = np_grad(p)
        norm = math.sqrt(sum(float(np.sum(x * x)) for x in g.values()))
        scale = min(1.0, max_norm / norm)
        clipped += scale < 1
        for k in p:
            d = g[k] * scale + wd * p[k]
            v[k] = mu * v[k] + d
            p[k] = p[k] - lr * v[k]
    assert clipped > 10, "the clip never engaged"
    assert_close(ours, p)


def test_clip_matches_reference():
    tx = opt.chain(opt.clip(0.3), opt.sgd(0.05))
    ours = run_ours(tx, 4)
    ref = run_reference(lambda t, g, p, s, k: p - 0.05 * np.clip(g, -0.3, 0.3), 4)
    assert_close(ours, ref)
