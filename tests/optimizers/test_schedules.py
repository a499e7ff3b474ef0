"""Schedules: closed-form values, joins, arithmetic, use inside jit, bad arguments."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers as opt
from optimizers import schedules as S

CLOSED_FORMS = [
    (S.constant(0.3), lambda t: 0.3),
    (S.step_decay(0.1, every=30, factor=0.5), lambda t: 0.1 * 0.5 ** (t // 30)),
    (S.exponential_decay(0.1, k=0.01), lambda t: 0.1 * math.exp(-0.01 * t)),
    (S.inverse_time(0.1, tau=100), lambda t: 0.1 * 100 / max(t, 100)),
    (S.cosine_decay(0.1, decay_steps=200),
     lambda t: 0.1 * 0.5 * (1 + math.cos(math.pi * min(t, 200) / 200))),
    (S.cosine_decay(0.1, decay_steps=200, end=0.01),
     lambda t: 0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * min(t, 200) / 200))),
    (S.linear(0.0, 0.1, steps=50), lambda t: 0.1 * min(t, 50) / 50),
    (S.piecewise_constant([0.1, 0.01, 0.001], boundaries=[100, 200]),
     lambda t: 0.1 if t < 100 else 0.01 if t < 200 else 0.001),
    (S.warmup(0.1, steps=10), lambda t: 0.1 * t / 10 if t < 10 else 0.1),
    (S.warmup(S.exponential_decay(0.1, 0.01), steps=10, start=0.01),
     lambda t: 0.01 + 0.09 * t / 10 if t < 10 else 0.1 * math.exp(-0.01 * (t - 10))),
    (S.join([S.constant(1.0), S.linear(1.0, 0.0, 10), S.exponential_decay(0.5, 0.1)],
            boundaries=[5, 15]),
     lambda t: 1.0 if t < 5 else 1.0 - (t - 5) / 10 if t < 15 else 0.5 * math.exp(-0.1 * (t - 15))),
    (2 * S.constant(0.1) + S.linear(0.0, 1.0, 10) - 0.05,
     lambda t: 0.2 + min(t, 10) / 10 - 0.05),
    (S.exponential_decay(0.1, 0.01) / 2, lambda t: 0.05 * math.exp(-0.01 * t)),
]


@pytest.mark.parametrize("index", range(len(CLOSED_FORMS)))
def test_closed_form_values(index):
    schedule, formula = CLOSED_FORMS[index]
    steps = [0, 1, 4, 5, 9, 10, 14, 15, 29, 30, 31, 60, 99, 100, 101, 150, 199, 200, 201, 1000]
    expected = np.array([formula(t) for t in steps])
    scalar = np.array([float(schedule(t)) for t in steps])
    vector = np.asarray(schedule(jnp.arange(1001)))[steps]
    jitted = np.array([float(jax.jit(schedule)(jnp.int32(t))) for t in steps[:5]])
    np.testing.assert_allclose(scalar, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(vector, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(jitted, expected[:5], rtol=1e-12, atol=1e-15)


def test_join_pieces_see_local_steps():
    seen = []
    piece = S.Schedule(lambda t: t.astype(jnp.float64), "identity")
    j = S.join([piece, piece, piece], boundaries=[3, 10])
    seen = np.asarray(j(jnp.arange(14)))
    np.testing.assert_array_equal(seen, [0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3])


def test_matches_optax_schedules():
    t = jnp.arange(500)
    pairs = [
        (S.cosine_decay(0.1, 300), optax.cosine_decay_schedule(0.1, 300)),
        (S.linear(0.1, 0.001, 200), optax.linear_schedule(0.1, 0.001, 200)),
        (S.step_decay(0.1, 50, 0.5),
         optax.exponential_decay(0.1, transition_steps=50, decay_rate=0.5, staircase=True)),
        (S.join([S.linear(0.0, 0.1, 50), S.cosine_decay(0.1, 300)], [50]),
         optax.join_schedules([optax.linear_schedule(0.0, 0.1, 50),
                               optax.cosine_decay_schedule(0.1, 300)], [50])),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(np.asarray(ours(t)), np.asarray(theirs(t)), rtol=1e-6, atol=1e-9)


def test_schedule_used_inside_jit_by_an_optimizer():
    lr = S.step_decay(1.0, every=2, factor=0.1)
    tx = opt.sgd(lr)
    params = jnp.zeros(())
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jnp.ones(()), s, p))
    used = []
    for _ in range(5):
        u, state = step(params, state)
        params = opt.apply_updates(params, u)
        used.append(float(opt.hyperparams(state)["learning_rate"]))
        assert float(u) == pytest.approx(-used[-1])
    np.testing.assert_allclose(used, [1.0, 1.0, 0.1, 0.1, 0.01], rtol=1e-12)
    assert float(params) == pytest.approx(-2.21)


def test_schedules_vmap_over_initial_value():
    values = jax.vmap(lambda init: S.exponential_decay(init, 0.1)(10))(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(values, np.array([1.0, 2.0]) * math.exp(-1.0), rtol=1e-12)


def test_repr_reads_like_the_call():
    assert repr(S.inverse_time(0.1, tau=100)) == "inverse_time(0.1, tau=100)"
    assert "cosine_decay" in repr(0.5 * S.cosine_decay(0.1, 10))


BAD = [
    (lambda: S.step_decay(0.1, every=0, factor=0.5), ValueError, "every"),
    (lambda: S.step_decay(0.1, every=2.5, factor=0.5), TypeError, "every"),
    (lambda: S.step_decay(0.1, every=10, factor=-1), ValueError, "factor"),
    (lambda: S.exponential_decay(-0.1, k=0.1), ValueError, "init"),
    (lambda: S.exponential_decay(0.1, k=-0.1), ValueError, "k"),
    (lambda: S.inverse_time(0.1, tau=0), ValueError, "tau"),
    (lambda: S.cosine_decay(0.1, decay_steps=0), ValueError, "decay_steps"),
    (lambda: S.piecewise_constant([0.1, 0.2], boundaries=[10, 20]), ValueError, "boundaries"),
    (lambda: S.piecewise_constant([0.1, 0.2, 0.3], boundaries=[20, 10]), ValueError,
     "increasing"),
    (lambda: S.join([S.constant(1.0)], boundaries=[5]), ValueError, "boundaries"),
    (lambda: S.join([1.0, 2.0], boundaries=[5]), TypeError, "schedules"),
    (lambda: S.warmup(0.1, steps=0), ValueError, "steps"),
]


@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_arguments(index):
    make, error, word = BAD[index]
    with pytest.raises(error, match=word):
        make()
