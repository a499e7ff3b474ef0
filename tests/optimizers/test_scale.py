"""Scale-free building blocks, LAMB and Lion against float64 NumPy written from the formulas,
and against optax's transforms of the same names."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers as opt


def problem():
    rng = np.random.default_rng(3)
    params = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3), "s": np.array(0.7)}
    return {k: jnp.asarray(v) for k, v in params.items()}


def grad_fn(params):
    """A gradient that depends on the params: a quartic-plus-quadratic loss."""
    return jax.tree_util.tree_map(lambda v: 0.5 * v**3 + v - 0.2, params)


def np_grad(p):
    return 0.5 * p**3 + p - 0.2


def run(tx, params, steps, apply=True):
    """Params (or, with apply=False, each step's updates at fixed params) over ``steps``."""
    state, out = tx.init(params), []
    for _ in range(steps):
        updates, state = tx.update(grad_fn(params), state, params)
        out.append(updates)
        if apply:
            params = opt.apply_updates(params, updates)
    return (params if apply else out), state


def np_run(step, params, steps, **state):
    """Runs ``step(p, g, t, **state) -> (p, state)`` leaf by leaf in float64 NumPy."""
    out = {}
    for k, p in params.items():
        p = np.asarray(p, np.float64)
        s = {name: np.zeros_like(p) if v is None else v for name, v in state.items()}
        for t in range(1, steps + 1):
            p, s = step(p, np_grad(p), t, **s)
        out[k] = p
    return out


def close(actual, expected, rtol=1e-12, atol=1e-14):
    for k in expected:
        np.testing.assert_allclose(np.asarray(actual[k], np.float64), expected[k], rtol=rtol,
                                   atol=atol, err_msg=k)


def np_adam_direction(g, t, m, v, b1, b2, eps, eps_root):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    return (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t) + eps_root) + eps), m, v


def test_scale_by_adam_then_learning_rate():
    lr, b1, b2, eps, eps_root = 0.05, 0.8, 0.99, 1e-3, 1e-4
    tx = opt.chain(opt.scale_by_adam(b1, b2, eps, eps_root), opt.scale_by_learning_rate(lr))

    def step(p, g, t, m, v):
        d, m, v = np_adam_direction(g, t, m, v, b1, b2, eps, eps_root)
        return p - lr * d, {"m": m, "v": v}

    params = problem()
    close(run(tx, params, 6)[0], np_run(step, params, 6, m=None, v=None))
    # with eps_root = 0 the chain is adam itself
    chained = opt.chain(opt.scale_by_adam(b1, b2, eps), opt.scale_by_learning_rate(lr))
    close(run(chained, params, 6)[0], run(opt.adam(lr, b1, b2, eps), params, 6)[0])


@pytest.mark.parametrize("ours, theirs", [
    (lambda: opt.scale_by_adam(eps_root=1e-8), lambda: optax.scale_by_adam(eps_root=1e-8)),
    (lambda: opt.scale_by_rms(0.9, eps_in_sqrt=True), lambda: optax.scale_by_rms()),
    (lambda: opt.scale_by_rms(0.9, 1e-6), lambda: optax.scale_by_rms(0.9, 1e-6,
                                                                      eps_in_sqrt=False)),
    (lambda: opt.scale_by_momentum(0.7, nesterov=True), lambda: optax.trace(0.7, nesterov=True)),
    (lambda: opt.scale_by_lion(0.8, 0.95), lambda: optax.scale_by_lion(0.8, 0.95)),
    (lambda: opt.scale_by_trust_ratio(), lambda: optax.scale_by_trust_ratio()),
    (lambda: opt.scale_by_trust_ratio(0.5, 0.3), lambda: optax.scale_by_trust_ratio(0.5, 0.3)),
    (lambda: opt.scale(-0.3), lambda: optax.scale(-0.3)),
    (lambda: opt.scale_by_learning_rate(0.3), lambda: optax.scale_by_learning_rate(0.3)),
    (lambda: opt.lamb(0.01, weight_decay=0.1), lambda: optax.lamb(0.01, weight_decay=0.1)),
    (lambda: opt.lamb(), lambda: optax.lamb(1e-3)),
    (lambda: opt.lion(0.01, weight_decay=0.05), lambda: optax.lion(0.01, weight_decay=0.05)),
    (lambda: opt.lion(), lambda: optax.lion(1e-4)),
], ids=["adam", "rms optax defaults", "rms eps outside", "nesterov trace", "lion block",
        "trust ratio", "trust ratio min_norm", "scale", "learning rate", "lamb", "lamb defaults",
        "lion", "lion defaults"])
def test_matches_optax_over_several_steps(ours, theirs):
    params = problem()
    ours, theirs = ours(), theirs()
    p, q = params, params
    s, t = ours.init(p), theirs.init(q)
    for _ in range(5):
        u, s = ours.update(grad_fn(p), s, p)
        v, t = theirs.update(grad_fn(q), t, q)
        p, q = opt.apply_updates(p, u), optax.apply_updates(q, v)
    close(p, {k: np.asarray(x) for k, x in q.items()}, rtol=1e-12)
    assert any(not np.allclose(p[k], params[k]) for k in p), "the transform must move something"


def test_scale_by_rms_and_momentum_against_numpy():
    decay, eps, mu = 0.9, 1e-3, 0.6

    def rms(p, g, t, s):
        s = decay * s + (1 - decay) * g**2
        return p + 0.1 * g / (np.sqrt(s) + eps), {"s": s}  # scale(+0.1): a step up is fine here

    params = problem()
    close(run(opt.chain(opt.scale_by_rms(decay, eps), opt.scale(0.1)), params, 5)[0],
          np_run(rms, params, 5, s=None))

    def nesterov(p, g, t, v):
        v = mu * v + g
        return p - 0.05 * (g + mu * v), {"v": v}

    tx = opt.chain(opt.scale_by_momentum(mu, nesterov=True), opt.scale_by_learning_rate(0.05))
    close(run(tx, params, 5)[0], np_run(nesterov, params, 5, v=None))
    close(run(tx, params, 5)[0], run(opt.momentum(0.05, mu, nesterov=True), params, 5)[0])


def np_trust_ratio(g, p, min_norm=0.0, coefficient=1.0):
    pn, un = max(np.linalg.norm(p), min_norm), max(np.linalg.norm(g), min_norm)
    return g if pn == 0 or un == 0 else g * coefficient * pn / un


def test_trust_ratio_per_leaf_and_its_zero_norm_convention():
    params = {"w": jnp.asarray([[3.0, 4.0]]), "zero_param": jnp.zeros(3),
              "zero_grad": jnp.asarray([1.0, 2.0]), "n": None}
    grads = {"w": jnp.asarray([[0.6, 0.8]]), "zero_param": jnp.asarray([1.0, -2.0, 2.0]),
             "zero_grad": jnp.zeros(2), "n": None}
    tx = opt.scale_by_trust_ratio()
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [[3.0, 4.0]], rtol=1e-15)  # ‖p‖/‖g‖ = 5
    np.testing.assert_array_equal(updates["zero_param"], [1.0, -2.0, 2.0])  # ratio 1
    np.testing.assert_array_equal(updates["zero_grad"], [0.0, 0.0])
    assert updates["n"] is None
    tx = opt.scale_by_trust_ratio(min_norm=2.0, trust_coefficient=0.5)
    updates, _ = tx.update(grads, tx.init(params), params)
    for k in ("w", "zero_param", "zero_grad"):
        expected = np_trust_ratio(np.asarray(grads[k]), np.asarray(params[k]), 2.0, 0.5)
        np.testing.assert_allclose(updates[k], expected, rtol=1e-14, err_msg=k)
    # the derivative through the step stays finite at a zero param (no 0/0 in sqrt)
    plain = opt.scale_by_trust_ratio()
    d = jax.grad(lambda p: jnp.sum(plain.update(grads, plain.init(p), p)[0]["zero_param"]))(params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(d))


def test_lamb_against_a_hand_written_reference():
    lr, b1, b2, eps, wd = 0.02, 0.9, 0.99, 1e-6, 0.1
    is_matrix = lambda p: {k: v.ndim > 1 for k, v in p.items()}  # noqa: E731

    def reference(params, steps):
        out = {}
        for k, p in params.items():
            p = np.asarray(p, np.float64)
            m, v = np.zeros_like(p), np.zeros_like(p)
            for t in range(1, steps + 1):
                d, m, v = np_adam_direction(np_grad(p), t, m, v, b1, b2, eps, 0.0)
                if p.ndim > 1:
                    d = d + wd * p
                pn, dn = np.linalg.norm(p), np.linalg.norm(d)
                r = 1.0 if pn == 0 or dn == 0 else pn / dn
                p = p - lr * r * d
            out[k] = p
        return out

    params = problem()
    tx = opt.lamb(lr, b1, b2, eps, weight_decay=wd, mask=is_matrix)
    new, state = run(tx, params, 7)
    close(new, reference(params, 7))
    hp = opt.hyperparams(state)
    assert {k: float(hp[k]) for k in ("learning_rate", "b2", "eps", "weight_decay")} == {
        "learning_rate": lr, "b2": b2, "eps": eps, "weight_decay": wd}
    # the rate is data: set it, and the next step uses it
    state = opt.set_hyperparams(state, learning_rate=0.0)
    updates, _ = tx.update(grad_fn(new), state, new)
    assert not any(np.any(np.asarray(u)) for u in jax.tree_util.tree_leaves(updates))


def test_lion_against_a_hand_written_reference():
    lr, b1, b2, wd = 0.01, 0.9, 0.99, 0.3

    def step(p, g, t, m):
        update = np.sign(b1 * m + (1 - b1) * g) + wd * p
        return p - lr * update, {"m": b2 * m + (1 - b2) * g}

    params = problem()
    tx = opt.lion(lr, b1, b2, weight_decay=wd)
    close(run(tx, params, 8)[0], np_run(step, params, 8, m=None))
    # the update is ±η (+ decay): the same size for every coordinate, unlike Adam's
    updates, _ = run(opt.lion(lr, weight_decay=0.0), params, 1, apply=False)
    for u in jax.tree_util.tree_leaves(updates[0]):
        np.testing.assert_allclose(np.abs(u), lr, rtol=1e-15)


def test_scheduled_learning_rate_and_step_size():
    schedule = opt.schedules.piecewise_constant([0.1, 0.01], [2])
    params = problem()
    updates, state = run(opt.scale_by_learning_rate(schedule), params, 3, apply=False)
    g = np.asarray(grad_fn(params)["b"])
    for u, lr in zip(updates, [0.1, 0.1, 0.01]):
        np.testing.assert_allclose(u["b"], -lr * g, rtol=1e-14)
    assert float(opt.hyperparams(state)["learning_rate"]) == pytest.approx(0.01)
    updates, _ = run(opt.scale(schedule), params, 3, apply=False)
    np.testing.assert_allclose(updates[2]["b"], 0.01 * g, rtol=1e-14)


def test_masked_treats_scale_by_learning_rate_as_an_optimizer():
    """A chain ending in scale_by_learning_rate applies −η: masked out leaves are frozen."""
    params = problem()
    tx = opt.masked(opt.chain(opt.scale_by_adam(), opt.scale_by_learning_rate(0.1)),
                    {"w": True, "b": False, "s": True})
    updates, _ = tx.update(grad_fn(params), tx.init(params), params)
    assert not np.any(np.asarray(updates["b"]))
    g = np.asarray(grad_fn(params)["w"])
    np.testing.assert_allclose(updates["w"], -0.1 * g / (np.abs(g) + 1e-8), rtol=1e-12)


@pytest.mark.parametrize("make", [opt.scale_by_adam, opt.scale_by_rms, opt.scale_by_momentum,
                                  opt.scale_by_lion], ids=["adam", "rms", "momentum", "lion"])
def test_dtype_policy_of_the_blocks(make):
    params = {"w": jnp.ones((2, 3), jnp.bfloat16)}
    tx = make()
    state = tx.init(params)
    moments = [x for x in jax.tree_util.tree_leaves(state) if jnp.ndim(x) == 2]
    assert moments and all(x.dtype == jnp.float32 for x in moments)
    assert all(v.dtype == jnp.float32 for v in opt.hyperparams(state).values())
    updates, state = tx.update({"w": jnp.full((2, 3), 0.5, jnp.bfloat16)}, state, params)
    assert updates["w"].dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(state)
               if jnp.ndim(x) == 2)
    state64 = make().init({"w": jnp.ones(2, jnp.float64)})
    assert all(v.dtype == jnp.float64 for v in opt.hyperparams(state64).values())


def test_trust_ratio_on_packed_params():
    params = problem()
    tx = opt.lamb(0.01)
    with pytest.raises(ValueError, match="scale_by_trust_ratio: computes one norm per leaf, but "
                                         "packed buffer 'float64' holds 3 leaves"):
        run(tx, opt.pack(params), 1)
    # one leaf per buffer: the norms are the leaves' norms again
    one_each = opt.pack(params, group=lambda path, leaf: jax.tree_util.keystr(path))
    state = tx.init(one_each)
    updates, _ = tx.update(grad_fn(one_each), state, one_each)
    expected, _ = tx.update(grad_fn(params), tx.init(params), params)
    close(opt.unpack(updates), {k: np.asarray(v) for k, v in expected.items()})


def test_blocks_under_jit_and_vmap_over_a_hyperparameter():
    params = problem()
    tx = opt.chain(opt.scale_by_lion(), opt.scale_by_learning_rate(1.0))
    rates = jnp.asarray([0.0, 0.1, 0.2])
    states = jax.vmap(lambda lr: opt.set_hyperparams(tx.init(params), learning_rate=lr))(rates)
    updates, _ = jax.jit(jax.vmap(lambda s: tx.update(grad_fn(params), s, params)))(states)
    sign = np.sign(np.asarray(grad_fn(params)["w"]))
    for i, lr in enumerate([0.0, 0.1, 0.2]):
        np.testing.assert_allclose(updates["w"][i], -lr * sign, rtol=1e-15)
