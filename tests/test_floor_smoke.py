"""The floor subset: every public part run once, checked against float64 NumPy references.

This module needs only the run-time dependencies (jax, jaxlib, chex, numpy) and
pytest. ``.ci/run`` runs it on the exact dependency floors declared in
``pyproject.toml`` (where the test extras optax, flax and torch may not install);
the main pass runs it with the rest of the suite. It steps every optimizer,
wrapper and schedule (Adam on a float32 leaf of 65,536 elements, one work chunk of
the one-pass CPU kernels, and on packed params), initializes and
gradient-checks every layer, runs every loss, the data helpers, a short ``fit``
and a two-trial vmapped search.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
import init
import optimizers as opt
from fnn import data, gradcheck, losses, train, tuning

LR = 0.01
BIG = (256, 256)  # 65,536 float32 elements: one work chunk of the one-pass kernels


def _grads(shape, seed):
    return np.random.default_rng(seed).normal(size=shape)


# one step from params p, gradient g, written from the formulas in the README's table
def _sgd(p, g):
    return p - LR * g


def _momentum(p, g, mu=0.9, nesterov=False):
    v = g  # v0 = 0
    return p - LR * (g + mu * v) if nesterov else p - LR * v


def _adagrad(p, g, eps=1e-7):
    return p - LR * g / (np.sqrt(g * g) + eps)


def _rmsprop(p, g, rho=0.99, eps=1e-8):
    return p - LR * g / (np.sqrt((1 - rho) * g * g) + eps)


def _adam(p, g, b1=0.9, b2=0.999, eps=1e-8):
    m, v = (1 - b1) * g, (1 - b2) * g * g
    return p - LR * (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + eps)


OPTIMIZERS = {
    "sgd": (lambda: opt.sgd(LR), _sgd),
    "momentum": (lambda: opt.momentum(LR), _momentum),
    "nesterov": (lambda: opt.momentum(LR, nesterov=True), lambda p, g: _momentum(p, g, nesterov=True)),
    "adagrad": (lambda: opt.adagrad(LR), _adagrad),
    "rmsprop": (lambda: opt.rmsprop(LR), _rmsprop),
    "adam": (lambda: opt.adam(LR), _adam),
    "adamw": (lambda: opt.adamw(LR, weight_decay=0.0), _adam),
}


def _step(tx, params, grads):
    """One jitted step through optimizers.step, as fnn.train runs it (the kernels' path)."""
    @jax.jit
    def step(params, state, grads):
        return opt.step(tx, grads, state, params)

    return step(params, tx.init(params), grads)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype, shape", [(np.float64, (3, 4)), (np.float32, BIG)],
                         ids=["float64 small", "float32 65536"])
def test_every_optimizer_takes_the_reference_step(name, dtype, shape):
    make, reference = OPTIMIZERS[name]
    p0 = np.random.default_rng(1).normal(size=shape)
    g = _grads(shape, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params, _ = _step(make(), {"w": jnp.asarray(p0, dtype)}, {"w": jnp.asarray(g, dtype)})
    fallback = [str(w.message) for w in caught
                if "kernel" in str(w.message) or "optimizers" in str(w.filename)]
    assert not fallback, fallback  # the floor must run the one-pass kernels, not fall back
    assert params["w"].dtype == dtype
    expected = reference(p0.astype(dtype).astype(np.float64), g.astype(dtype).astype(np.float64))
    # the new param is rounded to the dtype: an error of a few ulp of |p|, not of the step
    atol = 2 * np.finfo(dtype).eps * np.abs(p0).max()
    np.testing.assert_allclose(np.asarray(params["w"], np.float64), expected, rtol=0, atol=atol)


def test_adam_on_a_large_float32_leaf_runs_a_one_pass_kernel():
    """The one-pass kernels build and load on this jax (else the plain rule runs after a
    warning, and the reference test above could not tell)."""
    import re

    tx = opt.adam(LR)
    params = {"w": jnp.ones(BIG, jnp.float32)}

    def step(params, state, grads):
        return opt.step(tx, grads, state, params)

    hlo = jax.jit(step).lower(params, tx.init(params), params).compile().as_text()
    assert re.search(r'custom_call_target="[^"]+"', hlo), "no kernel call in the compiled step"


def test_packed_adam_matches_the_reference():
    p0 = {"a": np.random.default_rng(3).normal(size=BIG), "b": np.linspace(-1, 1, 7)}
    g = {"a": _grads(BIG, 4), "b": _grads((7,), 5)}
    to32 = lambda tree: jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), tree)
    packed, _ = _step(opt.adam(LR), opt.pack(to32(p0)), opt.pack(to32(g)))
    out = opt.unpack(packed)
    for k in p0:
        expected = _adam(p0[k].astype(np.float32).astype(np.float64),
                         g[k].astype(np.float32).astype(np.float64))
        atol = 2 * np.finfo(np.float32).eps * np.abs(p0[k]).max()
        np.testing.assert_allclose(np.asarray(out[k], np.float64), expected, rtol=0, atol=atol)


def test_wrappers_hyperparams_and_switch():
    p = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    g = {"w": jnp.full((2, 3), 4.0), "b": jnp.full(3, jnp.nan)}
    tx = opt.skip_nonfinite(opt.sgd(1.0))
    params, state = _step(tx, p, g)
    np.testing.assert_array_equal(np.asarray(params["w"]), np.ones((2, 3)))  # step skipped

    g = {"w": jnp.full((2, 3), 4.0), "b": jnp.full(3, 3.0)}
    norm = math.sqrt(6 * 16 + 3 * 9)
    tx = opt.chain(opt.clip_by_global_norm(1.0), opt.add_decayed_weights(0.5, mask=lambda t: {
        "w": True, "b": False}), opt.clip(10.0), opt.sgd(1.0))
    params, _ = _step(tx, p, g)
    np.testing.assert_allclose(np.asarray(params["w"]), 1 - (4 / norm + 0.5), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(params["b"]), 1 - 3 / norm, rtol=1e-12)

    tx = opt.masked(opt.sgd(1.0), {"w": True, "b": False})
    params, _ = _step(tx, p, g)
    np.testing.assert_allclose(np.asarray(params["w"]), -3.0)
    np.testing.assert_array_equal(np.asarray(params["b"]), 1.0)  # around a descent step: frozen
    tx = opt.chain(opt.masked(opt.clip(1.0), {"w": True, "b": False}), opt.sgd(1.0))
    params, _ = _step(tx, p, g)
    np.testing.assert_allclose(np.asarray(params["w"]), 0.0)  # clipped to 1, then one step
    np.testing.assert_allclose(np.asarray(params["b"]), -2.0)  # a transform passes g through

    tx = opt.accumulate(opt.sgd(1.0), every=2)
    state = tx.init(p)
    updates, state = tx.update(g, state, p)
    assert float(jnp.abs(updates["w"]).max()) == 0.0  # nothing until the second micro-step
    updates, state = tx.update(g, state, p)
    np.testing.assert_allclose(np.asarray(updates["w"]), -4.0)  # the mean of the two

    tx = opt.adam(1e-3)
    state = opt.set_hyperparams(tx.init(p), learning_rate=0.5)
    assert float(opt.hyperparams(state)["learning_rate"]) == 0.5

    tx = opt.switch(opt.sgd(1.0), opt.sgd(2.0))
    state = tx.init(p)
    state = state._replace(index=jnp.int32(1))
    updates, _ = tx.update(g, state, p)
    np.testing.assert_allclose(np.asarray(updates["w"]), -8.0)


def test_every_schedule():
    s = opt.schedules
    cases = [
        (s.constant(0.1), 7, 0.1),
        (s.step_decay(1.0, 3, 0.5), 7, 0.25),
        (s.exponential_decay(1.0, 0.1), 7, math.exp(-0.7)),
        (s.inverse_time(1.0, 2), 8, 2 / 8),
        (s.cosine_decay(1.0, 10), 5, 0.5),
        (s.linear(1.0, 0.0, 10), 7, 0.3),
        (s.warmup(s.constant(1.0), 4), 1, 0.25),
        (s.piecewise_constant([1.0, 0.1], [5]), 7, 0.1),
        (s.join([s.constant(1.0), s.constant(0.2)], [5]), 7, 0.2),
        (0.5 * s.constant(2.0) + 1e-5, 3, 1.0 + 1e-5),
    ]
    for schedule, step, expected in cases:
        assert float(jax.jit(schedule)(step)) == pytest.approx(expected, rel=1e-6), schedule
    # a scheduled learning rate inside an optimizer: the step uses the value at step 0
    params, _ = _step(opt.sgd(s.linear(1.0, 0.0, 10)), {"w": jnp.ones(2)}, {"w": jnp.ones(2)})
    np.testing.assert_allclose(np.asarray(params["w"]), 0.0, atol=1e-12)
    # its peak is data: set to 0.25, the schedule is scaled (0.25 at step 0), inside jit
    tx = opt.sgd(s.warmup(s.cosine_decay(1.0, 10), 2, start=1.0))
    updates, _ = jax.jit(lambda st: tx.update({"w": jnp.ones(2)}, st))(
        opt.set_hyperparams(tx.init({"w": jnp.ones(2)}), learning_rate=0.25))
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.25, rtol=1e-12)


def test_every_initializer():
    key = jax.random.key(0)
    shape = (64, 32)
    for name in ("xavier_uniform", "xavier_normal", "he_uniform", "he_normal", "lecun_uniform",
                 "lecun_normal", "fan_in_uniform", "orthogonal", "normal", "uniform",
                 "truncated_normal", "zeros", "ones"):
        for dtype in (jnp.float32, jnp.bfloat16):
            w = getattr(init, name)()(key, shape, dtype)
            assert w.shape == shape and w.dtype == dtype, name
    w = np.asarray(init.xavier_uniform()(key, shape, jnp.float64))
    limit = math.sqrt(6 / (64 + 32))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.9 * limit
    q = np.asarray(init.orthogonal()(key, (32, 32), jnp.float64))
    np.testing.assert_allclose(q @ q.T, np.eye(32), atol=1e-12)
    params = init.tree_init(key, {"w": (4, 3), "b": (3,)},
                            init.by_ndim(init.xavier_uniform(), init.zeros()))
    assert not np.asarray(params["b"]).any() and np.asarray(params["w"]).any()


def test_every_layer_and_loss_passes_its_gradient_check(capsys):
    from fnn import cli

    assert cli.main(["gradcheck"]) == 0, capsys.readouterr().out  # every layer, train and eval


def test_losses_against_numpy():
    rng = np.random.default_rng(6)
    z, y = rng.normal(size=(5, 4)), rng.integers(0, 4, 5)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    assert float(losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(y))) == pytest.approx(
        -logp[np.arange(5), y].mean(), rel=1e-12)
    t = rng.integers(0, 2, (5, 4)).astype(float)
    bce = np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))))
    assert float(losses.binary_cross_entropy(jnp.asarray(z), jnp.asarray(t))) == pytest.approx(
        bce, rel=1e-12)
    assert float(losses.mse(jnp.asarray(z), jnp.asarray(t))) == pytest.approx(
        np.mean((z - t) ** 2), rel=1e-12)
    w = {"w": jnp.asarray(z), "b": jnp.ones(4)}
    assert float(losses.l2_penalty(w)) == pytest.approx((z ** 2).sum(), rel=1e-12)
    assert float(losses.l1_penalty(w)) == pytest.approx(np.abs(z).sum(), rel=1e-12)
    assert float(losses.accuracy(jnp.asarray(z), jnp.asarray(y))) == np.mean(z.argmax(1) == y)
    gradcheck.check_grads(lambda a: losses.softmax_cross_entropy(a, jnp.asarray(y)),
                          jnp.asarray(z))


def _blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4)) + 3.0 * np.eye(3, 4)[y]
    return x.astype(np.float32), y.astype(np.int32)


def test_data_fit_packed_and_search():
    x, y = _blobs()
    (x_train, y_train), (x_val, y_val) = data.train_val_split(jax.random.key(0), (x, y), 0.25)
    assert len(x_train) == 90 and len(x_val) == 30
    white = np.asarray(data.zca_whiten(x_train)(x_train), np.float64)
    np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(4), atol=1e-3)
    model = fnn.serial(fnn.Dense(16), fnn.BatchNorm(), fnn.Relu(), fnn.Dropout(0.1), fnn.Dense(3))
    loss_fn, eval_fn = train.classifier(model)
    _, params, model_state = model.init(jax.random.key(1), (-1, 4))
    state = train.init_train_state(params, model_state, opt.adam(0.01), packed=True)
    state, history = train.fit(loss_fn, opt.adam(0.01), state, (x_train, y_train),
                               key=jax.random.key(2), epochs=4, batch_size=16,
                               val_data=(x_val, y_val), eval_fn=eval_fn, progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["val_accuracy"][-1] > 0.8, history

    tx = opt.adam(0.01)
    state = train.init_train_state(params, model_state, tx)
    configs = [{"learning_rate": 0.0}, {"learning_rate": 0.02}]
    results = tuning.parallel_fit(loss_fn, tx, state, configs, (x_train, y_train),
                                  key=jax.random.key(3), epochs=2, batch_size=30,
                                  val_data=(x_val, y_val), eval_fn=eval_fn)
    assert len(results) == 2
