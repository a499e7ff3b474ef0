"""Schedules as data (issue 16, item 4): a scheduled hyperparameter's peak is settable data.

A step uses schedule(t) · peak / the schedule's own peak, so set_hyperparams, vmap and
parallel_fit change the peak of warmup + cosine with no recompilation. References: float64
NumPy formulas of the schedules and of Adam, written here independently of optimizers, and
separate runs of optimizers built with each peak.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt
from fnn import train, tuning
from optimizers import schedules as S

F64 = jnp.float64


def np_cosine(init, steps, t, end=0.0):
    return end + (init - end) * 0.5 * (1 + np.cos(np.pi * np.minimum(t, steps) / steps))


def np_warmup_cosine(peak, warm, decay, t):
    t = np.asarray(t, np.float64)
    return np.where(t < warm, peak * t / warm, np_cosine(peak, decay, np.maximum(t - warm, 0)))


# ------------------------------------------------------------------ the peak of each schedule

PEAKS = {
    "constant": (S.constant(0.3), 0.3),
    "step_decay": (S.step_decay(0.1, 30, 0.5), 0.1),
    "exponential": (S.exponential_decay(0.2, 0.01), 0.2),
    "inverse_time": (S.inverse_time(0.1, 100), 0.1),
    "cosine": (S.cosine_decay(0.1, 200, end=0.01), 0.1),
    "rising cosine": (S.cosine_decay(0.01, 200, end=0.1), 0.1),  # the end, not step 0
    "linear up": (S.linear(0.0, 0.1, 50), 0.1),
    "piecewise": (S.piecewise_constant([0.1, 0.5, 0.01], [10, 20]), 0.5),  # the middle value
    "join": (S.join([S.linear(0.0, 0.2, 5), S.exponential_decay(0.2, 0.1)], [5]), 0.2),
    "warmup cosine": (S.warmup(S.cosine_decay(1e-3, 1000), 100), 1e-3),
    "warmup number": (S.warmup(0.05, 10, start=0.01), 0.05),
    "arithmetic": (0.5 * S.cosine_decay(0.1, 100) + 1e-5, 0.05001),
    "negative": (-1.0 * S.cosine_decay(0.1, 100), -0.1),  # largest magnitude, sign kept
    "user Schedule": (S.Schedule(lambda t: 0.3 * jnp.sin(t / 10.0), "sin", probe=(0, 16)),
                      0.3 * math.sin(1.6)),
}


@pytest.mark.parametrize("name", list(PEAKS))
def test_peak_is_the_value_of_largest_magnitude_at_the_probe_steps(name):
    schedule, expected = PEAKS[name]
    assert S.peak(schedule).shape == ()
    assert float(S.peak(schedule)) == pytest.approx(expected, rel=1e-12)
    if name != "user Schedule":  # the others are monotone between probe steps: a true maximum
        values = np.asarray(schedule(jnp.arange(1500)))
        assert float(S.peak(schedule)) == pytest.approx(values[np.argmax(np.abs(values))],
                                                         rel=1e-12)


def test_a_traced_peak_follows_its_argument():
    peaks = jax.vmap(lambda a: S.peak(S.warmup(S.cosine_decay(a, 100), 10)))(
        jnp.asarray([0.1, 0.3]))
    np.testing.assert_allclose(peaks, [0.1, 0.3], rtol=1e-12)


# ------------------------------------------------------------------ setting scales the schedule

def sgd_trace(schedule, steps, peak=None):
    """The learning rates the first ``steps`` sgd steps used, read with hyperparams, and the
    updates (grad 1, so the update is −lr); the peak set first when given."""
    tx = opt.sgd(schedule)
    state = tx.init(jnp.zeros((), F64))
    if peak is not None:
        state = opt.set_hyperparams(state, learning_rate=peak)

    def body(state, _):
        update, state = tx.update(jnp.ones((), F64), state, jnp.zeros((), F64))
        return state, (opt.hyperparams(state)["learning_rate"], update)

    return jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps)[1])(state)


T = np.arange(40.0)
SCALED = {  # schedule, its own peak, NumPy formula of its values
    "warmup cosine": (S.warmup(S.cosine_decay(1e-3, 20), 10), 1e-3,
                      lambda t: np_warmup_cosine(1e-3, 10, 20, t)),
    "cosine with end": (S.cosine_decay(0.1, 20, end=0.01), 0.1,
                        lambda t: np_cosine(0.1, 20, t, end=0.01)),  # the end scales too
    "step_decay": (S.step_decay(0.1, 5, 0.5), 0.1, lambda t: 0.1 * 0.5 ** (t // 5)),
    "piecewise": (S.piecewise_constant([0.1, 0.5, 0.01], [10, 20]), 0.5,
                  lambda t: np.select([t < 10, t < 20], [0.1, 0.5], 0.01)),
    "join": (S.join([S.linear(0.0, 0.2, 5), S.exponential_decay(0.2, 0.1)], [5]), 0.2,
             lambda t: np.where(t < 5, 0.2 * t / 5, 0.2 * np.exp(-0.1 * (t - 5)))),
    "arithmetic": (0.5 * S.cosine_decay(0.1, 20) + 1e-5, 0.05 + 1e-5,  # the floor scales too
                   lambda t: 0.5 * np_cosine(0.1, 20, t) + 1e-5),
    "user Schedule": (S.Schedule(lambda t: 0.2 / (1.0 + t), "1/(1+t)"), 0.2,
                      lambda t: 0.2 / (1 + t)),
}


@pytest.mark.parametrize("name", list(SCALED))
def test_setting_the_peak_multiplies_the_whole_schedule(name):
    schedule, own, formula = SCALED[name]
    rates, updates = sgd_trace(schedule, len(T), peak=0.37)
    expected = formula(T) * (0.37 / own)
    np.testing.assert_allclose(rates, expected, rtol=1e-13, atol=1e-18)
    np.testing.assert_allclose(updates, -expected, rtol=1e-13, atol=1e-18)
    assert np.max(np.abs(np.asarray(rates))) == pytest.approx(0.37, rel=1e-13)  # the new peak


@pytest.mark.parametrize("name", list(SCALED))
def test_an_unset_peak_steps_bit_for_bit_as_the_schedule(name):
    """Never set, the peak scales by exactly 1: the same numbers as the same schedule given as
    a plain function (which has no peak in the state), in the same compiled program."""
    schedule, _, formula = SCALED[name]
    rates, updates = sgd_trace(schedule, len(T))
    plain_rates, plain_updates = sgd_trace(lambda t: schedule(t), len(T))
    np.testing.assert_array_equal(rates, plain_rates)
    np.testing.assert_array_equal(updates, plain_updates)
    np.testing.assert_allclose(rates, formula(T), rtol=1e-13, atol=1e-18)


def test_hyperparams_reads_the_used_value_and_settable_reads_the_peak():
    params = {"w": jnp.ones(3, F64)}
    grads = {"w": jnp.asarray([0.5, -1.0, 2.0], F64)}
    tx = opt.adam(S.cosine_decay(1e-3, 100))
    state = tx.init(params)
    assert float(opt.hyperparams(state)["learning_rate"]) == 1e-3
    state = opt.set_hyperparams(state, learning_rate=4e-3)
    # before the first step: the value the first step will use, so the new peak
    assert float(opt.hyperparams(state)["learning_rate"]) == pytest.approx(4e-3, rel=1e-15)
    assert float(opt.hyperparams(state, settable=True)["learning_rate"]) == 4e-3
    assert set(opt.hyperparams(state, settable=True)) == {"learning_rate", "b1", "b2", "eps"}
    for _ in range(3):
        _, state = tx.update(grads, state, params)
    used = 4e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 100))  # the third step: step 2
    assert float(opt.hyperparams(state)["learning_rate"]) == pytest.approx(used, rel=1e-14)
    state = opt.set_hyperparams(state, learning_rate=1e-3)
    # after a step: still the value that step used; the next step uses the new peak
    assert float(opt.hyperparams(state)["learning_rate"]) == pytest.approx(used, rel=1e-14)
    _, state = tx.update(grads, state, params)
    assert float(opt.hyperparams(state)["learning_rate"]) == pytest.approx(
        1e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 100)), rel=1e-14)


def test_setting_peaks_does_not_recompile_the_step():
    params = {"w": jnp.ones(3, F64)}
    tx = opt.adam(S.warmup(S.cosine_decay(1e-3, 50), 5))
    traces = []
    step = jax.jit(lambda s: traces.append(1) or tx.update(params, s, params))
    state = tx.init(params)
    for peak in (1e-3, 3e-3, 1e-1, 7e-5):
        state = opt.set_hyperparams(state, learning_rate=peak)
        _, state = step(state)
    assert step._cache_size() == 1 and len(traces) == 1
    assert float(opt.hyperparams(state, settable=True)["learning_rate"]) == 7e-5


def test_the_state_peak_wins_over_the_stepping_optimizers_own_like_a_set_number():
    """The rule for numbers holds for peaks: a peak set with set_hyperparams wins over the
    peak of the optimizer that steps the state; an unset one is the optimizer's own."""
    zero = jnp.zeros((), F64)
    made = opt.sgd(S.cosine_decay(1e-3, 10))
    other = opt.sgd(S.cosine_decay(5e-3, 10))  # same shape, another peak
    set_state = opt.set_hyperparams(made.init(zero), learning_rate=2e-2)
    for _ in range(3):
        _, set_state = other.update(jnp.ones((), F64), set_state, zero)
    assert float(opt.hyperparams(set_state)["learning_rate"]) == pytest.approx(
        np_cosine(2e-2, 10, 2), rel=1e-14)
    state = made.init(zero)
    for _ in range(3):
        _, state = other.update(jnp.ones((), F64), state, zero)
    assert float(opt.hyperparams(state)["learning_rate"]) == pytest.approx(
        np_cosine(5e-3, 10, 2), rel=1e-14)
    assert float(opt.hyperparams(state, settable=True)["learning_rate"]) == 5e-3


def test_a_plain_function_is_read_but_not_settable():
    state = opt.adam(lambda step: 1e-3 / (1.0 + step)).init({"w": jnp.ones(2)})
    assert float(opt.hyperparams(state)["learning_rate"]) == pytest.approx(1e-3)
    assert "learning_rate" not in opt.hyperparams(state, settable=True)
    with pytest.raises(ValueError, match="learning_rate follows a schedule whose peak cannot be "
                                         "set: a plain function"):
        opt.set_hyperparams(state, learning_rate=1e-2)
    # a schedule built with a plain function is not settable either; a Schedule wrapping it is
    joined = opt.sgd(S.join([S.constant(0.1), lambda t: 0.1 / (1.0 + t)], [5]))
    assert "learning_rate" not in opt.hyperparams(joined.init(jnp.ones(2)), settable=True)
    wrapped = opt.sgd(S.Schedule(lambda t: 0.1 / (1.0 + t), "0.1/(1+t)"))
    state = opt.set_hyperparams(wrapped.init(jnp.ones(2)), learning_rate=0.4)
    assert float(opt.hyperparams(state)["learning_rate"]) == pytest.approx(0.4)


def test_groups_and_links_set_their_own_schedule():
    params = {"body": jnp.ones(2, F64), "head": jnp.ones(2, F64)}
    tx = opt.chain(opt.clip_by_global_norm(10.0), opt.partition(
        {"body": opt.sgd(S.cosine_decay(0.1, 10)), "head": opt.sgd(S.cosine_decay(0.2, 10))},
        {"body": "body", "head": "head"}))
    state = opt.set_hyperparams(tx.init(params), (1, "head"), learning_rate=0.8)
    updates, state = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), state, params)
    np.testing.assert_allclose(updates["body"], [-0.1, -0.1], rtol=1e-15)
    np.testing.assert_allclose(updates["head"], [-0.8, -0.8], rtol=1e-15)
    assert float(opt.hyperparams(state, (1, "head"), settable=True)["learning_rate"]) == 0.8


def test_the_derivative_with_respect_to_the_peak():
    """d update / d peak = −schedule(t) / own peak · g, also where the peak equals its own."""
    schedule = S.warmup(S.cosine_decay(0.1, 20), 4)
    tx = opt.sgd(schedule)
    zero = jnp.zeros((), F64)

    def update_at_step_6(peak):
        state = opt.set_hyperparams(tx.init(zero), learning_rate=peak)
        for _ in range(7):
            update, state = tx.update(jnp.asarray(3.0, F64), state, zero)
        return update

    for peak in (0.1, 0.25):  # 0.1: the schedule's own peak (a `where` there would cut it)
        assert float(jax.grad(update_at_step_6)(peak)) == pytest.approx(
            -3.0 * np_warmup_cosine(0.1, 4, 20, 6) / 0.1, rel=1e-12)


def test_float32_peaks_follow_the_dtype_policy():
    with jax.enable_x64(False):
        tx = opt.sgd(S.warmup(S.cosine_decay(1e-3, 20), 5))
        state = opt.set_hyperparams(tx.init(jnp.zeros(2, jnp.float32)), learning_rate=3e-2)
        assert state.hyperparams["learning_rate"].dtype == jnp.float32
        for _ in range(8):
            updates, state = tx.update(jnp.ones(2, jnp.float32), state)
        assert updates.dtype == jnp.float32
        np.testing.assert_allclose(updates, -np_warmup_cosine(3e-2, 5, 20, 7), rtol=1e-6)


# ------------------------------------------------------------------ many peaks at once


def quadratic():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
    curvature = {"w": rng.uniform(0.5, 2.0, (4, 3)), "b": rng.uniform(0.5, 2.0, 3)}
    center = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
    return params, curvature, center


PEAKS_16 = np.geomspace(1e-3, 3e-1, 16)
WARM, DECAY, STEPS = 5, 20, 30


def np_adam(peak, params, curvature, center, steps=STEPS, b1=0.9, b2=0.999, eps=1e-8):
    """float64 NumPy Adam on ½ Σ a (p − c)², with the warmup + cosine rate of this peak."""
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t in range(1, steps + 1):
        lr = np_warmup_cosine(peak, WARM, DECAY, t - 1)
        for k in p:
            g = curvature[k] * (p[k] - center[k])
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            p[k] = p[k] - lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
    return p


def test_a_vmapped_batch_of_16_peaks_is_one_program_equal_to_16_separate_runs():
    params, curvature, center = quadratic()
    params = jax.tree_util.tree_map(jnp.asarray, params)

    def make(peak):
        return opt.adam(S.warmup(S.cosine_decay(peak, DECAY), WARM))

    def train_(tx, p, s):
        def body(carry, _):
            p, s = carry
            grads = jax.tree_util.tree_map(lambda a, x, c: a * (x - c), curvature, p, center)
            u, s = tx.update(grads, s, p)
            return (opt.apply_updates(p, u), s), None
        return jax.lax.scan(body, (p, s), None, length=STEPS)[0][0]

    tx = make(1e-3)
    traces = []

    @jax.jit
    def train_all(peaks):
        traces.append(1)
        states = jax.vmap(lambda v: opt.set_hyperparams(tx.init(params), learning_rate=v))(peaks)
        return jax.vmap(lambda s: train_(tx, params, s))(states)

    together = train_all(jnp.asarray(PEAKS_16))
    train_all(jnp.asarray(PEAKS_16[::-1]))
    assert len(traces) == 1
    for i, peak in enumerate(PEAKS_16):
        reference = np_adam(peak, *quadratic())
        for k in params:
            np.testing.assert_allclose(together[k][i], reference[k], rtol=1e-10, atol=1e-12)
        if i % 5 == 0:  # and optimizers built with the peak (each its own compilation)
            alone_tx = make(float(peak))
            alone = jax.jit(lambda p, t=alone_tx: train_(t, p, t.init(p)))(params)
            for k in params:
                np.testing.assert_allclose(together[k][i], alone[k], rtol=1e-12, atol=1e-14)
    assert len({round(float(together["b"][i, 0]), 8) for i in range(16)}) == 16


def classification_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6))
    y = (x @ rng.normal(size=(6, 3))).argmax(1).astype(np.int32)
    params = {"w": jnp.asarray(rng.normal(size=(6, 3)) * 0.1), "b": jnp.zeros(3, F64)}
    traces = []

    def loss_fn(p, s, batch, key):
        traces.append(1)
        xb, yb = batch
        z = xb @ p["w"] + p["b"]
        loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), yb[:, None], 1))
        return loss, (s, {"accuracy": jnp.mean(jnp.argmax(z, -1) == yb)})

    def eval_fn(p, s, batch):
        xb, yb = batch
        return {"loss": loss_fn(p, s, batch, None)[0],
                "accuracy": jnp.mean(jnp.argmax(xb @ p["w"] + p["b"], -1) == yb)}

    return (jnp.asarray(x), jnp.asarray(y)), params, loss_fn, eval_fn, traces


def test_parallel_fit_over_16_peaks_of_warmup_cosine_compiles_once_and_equals_each_alone():
    data, params, loss_fn, eval_fn, traces = classification_problem()

    def make(peak):  # 3 batches an epoch, 4 epochs: warm-up over the first 4 steps
        return opt.adam(S.warmup(S.cosine_decay(peak, 8), 4))

    tx = make(1e-2)
    configs = [{"learning_rate": float(v)} for v in np.geomspace(1e-3, 1.0, 16)]
    results = tuning.parallel_fit(loss_fn, tx, train.init_train_state(params, {}, tx), configs,
                                  data, key=jax.random.key(3), epochs=4, batch_size=32,
                                  val_data=data, eval_fn=eval_fn)
    assert len(traces) <= 2  # the epoch program and evaluation: not 16 × anything
    assert len({round(r["val_loss"], 8) for r in results}) == 16
    for config, result in zip(configs, results):  # every one: each its own compilation
        alone_tx = make(config["learning_rate"])
        alone, history = train.fit(loss_fn, alone_tx,
                                   train.init_train_state(params, {}, alone_tx), data,
                                   key=jax.random.key(3), epochs=4, batch_size=32, progress=False)
        assert result["train_loss"] == pytest.approx(history["train_loss"][-1], rel=1e-11)
        val = eval_fn(alone.params, {}, data)  # eagerly: no compilation per model
        assert result["val_loss"] == pytest.approx(float(val["loss"]), rel=1e-11)
