"""Every row of README's optax → fnn table, checked numerically.

"Equal" rows: the fnn and optax optimizers, fed the same gradient sequence from the same
params, end at the same params to float64 rounding (the two libraries order some float
operations differently, e.g. optax multiplies by 1/√v where fnn divides). "Differs" rows: the
results differ by far more than rounding, in the direction the table says.

All optimizer runs are traced into one jitted program (one compilation), each a ``lax.scan``
over its gradient sequence.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers as opt
from optimizers import schedules

STEPS = 12
PARAMS = {"w": jnp.asarray(np.linspace(-1.0, 1.0, 12).reshape(4, 3)), "b": jnp.full(3, 0.5)}


def is_weight(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def gradients(nan_steps=()):
    """A fixed float64 gradient sequence (global norm ≈ 4, so clipping at 0.5 acts), with
    every gradient NaN at ``nan_steps``."""
    rng = np.random.default_rng(0)
    grads = {"w": rng.normal(size=(STEPS, 4, 3)), "b": rng.normal(size=(STEPS, 3))}
    for t in nan_steps:
        grads["w"][t, 0, 0] = np.nan
    return jax.tree.map(jnp.asarray, grads)




def decaying(step):
    """A learning rate that changes every step, one function for both libraries (optax's own
    schedules compute in float32 at the int32 step count; the step convention is tested)."""
    return 0.02 * 0.8 ** jnp.asarray(step, jnp.float64)


# name: (fnn optimizer, optax optimizer, "equal" | "differs" | "close", steps whose gradients
# are NaN)
CASES = {
    # SGD and momentum: one convention (η outside the velocity: v ← μv + g, p ← p − ηv)
    "sgd": (opt.sgd(0.1), optax.sgd(0.1), "equal", ()),
    "momentum": (opt.momentum(0.05, momentum=0.9), optax.sgd(0.05, momentum=0.9), "equal", ()),
    "nesterov": (opt.momentum(0.05, momentum=0.9, nesterov=True),
                 optax.sgd(0.05, momentum=0.9, nesterov=True), "equal", ()),
    "momentum_schedule": (opt.momentum(decaying, momentum=0.9),
                          optax.sgd(decaying, momentum=0.9), "equal", ()),
    # AdaGrad: fnn h₀ = 0, ε outside the root; optax h₀ = 0.1, ε inside
    "adagrad_defaults": (opt.adagrad(0.1), optax.adagrad(0.1), "differs", ()),
    "adagrad_as_optax": (opt.adagrad(0.1, initial_accumulator=0.1, eps_in_sqrt=True),
                         optax.adagrad(0.1), "equal", ()),
    "adagrad_eps_placement": (opt.adagrad(0.1, eps=0.5),
                              optax.adagrad(0.1, initial_accumulator_value=0.0, eps=0.5),
                              "differs", ()),
    # at h₀ = 0 only ε's place differs: √h + ε vs √(h + ε), ≈ ε/√h relative, small at 1e-7
    "adagrad_eps_placement_default_eps": (
        opt.adagrad(0.1, eps=1e-7), optax.adagrad(0.1, initial_accumulator_value=0.0, eps=1e-7),
        "close", ()),
    "adagrad_eps_inside": (opt.adagrad(0.1, eps=0.5, eps_in_sqrt=True),
                           optax.adagrad(0.1, initial_accumulator_value=0.0, eps=0.5),
                           "equal", ()),
    # RMSProp: fnn ρ = 0.99, ε outside (torch); optax decay = 0.9, ε inside (eps_in_sqrt=True)
    "rmsprop_defaults": (opt.rmsprop(0.01), optax.rmsprop(0.01), "differs", ()),
    "rmsprop_as_optax": (opt.rmsprop(0.01, decay=0.9, eps_in_sqrt=True), optax.rmsprop(0.01),
                         "equal", ()),
    "rmsprop_as_torch": (opt.rmsprop(0.01, eps=1e-3),
                         optax.rmsprop(0.01, decay=0.99, eps=1e-3, eps_in_sqrt=False),
                         "equal", ()),
    "rmsprop_centered": (opt.rmsprop(0.01, decay=0.9, centered=True, eps_in_sqrt=True),
                         optax.rmsprop(0.01, centered=True), "equal", ()),
    "rmsprop_momentum": (opt.rmsprop(0.01, decay=0.9, momentum=0.9, eps_in_sqrt=True),
                         optax.rmsprop(0.01, momentum=0.9), "equal", ()),
    # fnn: b ← μb + g/d, p ← p − ηb; optax traces η·g/d: equal only for a constant η
    "rmsprop_momentum_schedule": (
        opt.rmsprop(decaying, decay=0.9, momentum=0.9, eps_in_sqrt=True),
        optax.rmsprop(decaying, momentum=0.9), "differs", ()),
    # Adam / AdamW: one convention; AdamW's default λ differs (fnn 0.01 as torch, optax 1e-4)
    "adam": (opt.adam(0.01), optax.adam(0.01), "equal", ()),
    "adam_schedule": (opt.adam(decaying), optax.adam(decaying), "equal", ()),
    # schedules cross over: an optax schedule in an fnn optimizer and the other way round
    "optax_schedule_in_fnn": (opt.adam(optax.cosine_decay_schedule(0.02, STEPS)),
                              optax.adam(optax.cosine_decay_schedule(0.02, STEPS)), "equal", ()),
    "fnn_schedule_in_optax": (opt.adam(schedules.cosine_decay(0.02, STEPS)),
                              optax.adam(schedules.cosine_decay(0.02, STEPS)), "equal", ()),
    "adamw_masked": (opt.adamw(0.01, weight_decay=0.1, mask=is_weight),
                     optax.adamw(0.01, weight_decay=0.1, mask=is_weight), "equal", ()),
    "adamw_defaults": (opt.adamw(0.01), optax.adamw(0.01), "differs", ()),
    "adamw_same_decay": (opt.adamw(0.01), optax.adamw(0.01, weight_decay=0.01), "equal", ()),
    # gradient transforms and chain
    "clip_by_global_norm": (opt.chain(opt.clip_by_global_norm(0.5), opt.sgd(0.1)),
                            optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.1)),
                            "equal", ()),
    "clip": (opt.chain(opt.clip(0.3), opt.sgd(0.1)),
             optax.chain(optax.clip(0.3), optax.sgd(0.1)), "equal", ()),
    "chain_decay_adam": (
        opt.chain(opt.clip_by_global_norm(1.0), opt.add_decayed_weights(1e-2, mask=is_weight),
                  opt.adam(0.01)),
        optax.chain(optax.clip_by_global_norm(1.0),
                    optax.add_decayed_weights(1e-2, mask=is_weight), optax.adam(0.01)),
        "equal", ()),
    # the libraries mix in one chain: an optax transform as a link of fnn's chain
    "optax_link_in_fnn_chain": (opt.chain(optax.clip_by_global_norm(0.5), opt.adam(0.01)),
                                optax.chain(optax.clip_by_global_norm(0.5), optax.adam(0.01)),
                                "equal", ()),
    "fnn_link_in_optax_chain": (optax.chain(opt.clip_by_global_norm(0.5), optax.adam(0.01)),
                                optax.chain(optax.clip_by_global_norm(0.5), optax.adam(0.01)),
                                "equal", ()),
    # masked around a gradient transform: the same (left-out leaves pass through)
    "masked_transform": (opt.chain(opt.masked(opt.clip(0.1), is_weight), opt.sgd(0.1)),
                         optax.chain(optax.masked(optax.clip(0.1), is_weight), optax.sgd(0.1)),
                         "equal", ()),
    # masked around an optimizer: fnn freezes left-out leaves, optax adds the raw gradient
    "masked_optimizer": (opt.masked(opt.sgd(0.1), is_weight),
                         optax.masked(optax.sgd(0.1), is_weight), "differs", ()),
    # NaN steps: skipped by both while optax's consecutive limit is not exceeded
    "skip_nonfinite": (opt.skip_nonfinite(opt.adam(0.01)),
                       optax.apply_if_finite(optax.adam(0.01), max_consecutive_errors=3),
                       "equal", (3, 4, 5)),
    # … past it optax applies the NaN update; skip_nonfinite never does
    "skip_nonfinite_past_limit": (opt.skip_nonfinite(opt.adam(0.01)),
                                  optax.apply_if_finite(optax.adam(0.01),
                                                        max_consecutive_errors=2),
                                  "differs", (3, 4, 5)),
    # gradient accumulation: the mean of every k gradients (optax keeps a running mean, in
    # float32 unless accumulator_dtype says otherwise; fnn sums in float32 or the param dtype)
    "accumulate": (opt.accumulate(opt.adam(0.01), every=3),
                   optax.MultiSteps(optax.adam(0.01), every_k_schedule=3,
                                    accumulator_dtype=jnp.float64), "equal", ()),
}


def run(tx, apply_updates, grads):
    def step(carry, g):
        params, state = carry
        updates, state = tx.update(g, state, params)
        return (apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (PARAMS, tx.init(PARAMS)), grads)
    return params


@functools.cache
def results():
    """name -> (fnn's params, optax's params) after STEPS steps; one compilation for all."""

    @jax.jit
    def everything(grads_by_case):
        return {name: (run(ours, opt.apply_updates, grads_by_case[name]),
                       run(theirs, optax.apply_updates, grads_by_case[name]))
                for name, (ours, theirs, _, _) in CASES.items()}

    return everything({name: gradients(nan) for name, (_, _, _, nan) in CASES.items()})


def largest_difference(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def check_row(name):
    """Raises AssertionError unless row ``name`` holds as the table states it."""
    ours, theirs = results()[name]
    relation = CASES[name][2]
    moved = largest_difference(ours, PARAMS)
    assert 1e-3 < moved < 10, f"the run did not train sensibly (moved {moved})"
    if relation == "equal":
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)
    elif relation == "close":  # different, but only by an ε-sized amount
        assert 1e-9 < largest_difference(ours, theirs) < 1e-4 * moved
    elif name == "skip_nonfinite_past_limit":  # optax applied the third NaN step
        assert np.isnan(np.asarray(theirs["w"])).any()
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(ours))
        # fnn's run is the finite steps only: the "skip_nonfinite" row, equal to optax's there
        np.testing.assert_array_equal(np.asarray(ours["w"]),
                                      np.asarray(results()["skip_nonfinite"][0]["w"]))
    elif name == "masked_optimizer":  # the bias is left out of the mask
        g = np.asarray(gradients()["b"]).sum(axis=0)
        np.testing.assert_array_equal(np.asarray(ours["b"]), np.asarray(PARAMS["b"]))  # frozen
        np.testing.assert_allclose(np.asarray(theirs["b"]), np.asarray(PARAMS["b"]) + g,
                                   rtol=1e-12)  # p + Σg: a step up the gradient
    else:  # a different method: far above rounding (1e-12), not a near-equality
        assert relation == "differs"
        assert largest_difference(ours, theirs) > 1e-4 * moved


def test_every_row_of_the_table():
    """One test for all rows (the runs share one compiled program; one test keeps it on one
    pytest-xdist worker); the failure lists every row that does not hold."""
    failures = []
    for name in CASES:
        try:
            check_row(name)
        except AssertionError as error:
            failures.append(f"{name}: {error}")
    assert not failures, "\n".join(failures)


def test_set_hyperparams_is_inject_hyperparams():
    """optax needs ``inject_hyperparams`` to change a rate in the state; every fnn state has
    its hyperparameters (``set_hyperparams``). Changing the rate mid-run agrees."""
    grads = gradients()
    ours_tx = opt.adam(0.01)
    theirs_tx = optax.inject_hyperparams(optax.adam)(learning_rate=0.01)

    @jax.jit
    def both(g):
        half = jax.tree.map(lambda x: x[: STEPS // 2], g)
        rest = jax.tree.map(lambda x: x[STEPS // 2:], g)
        runs = []
        for tx, apply, set_rate in (
                (ours_tx, opt.apply_updates,
                 lambda s: opt.set_hyperparams(s, learning_rate=0.002)),
                (theirs_tx, optax.apply_updates,
                 lambda s: s._replace(hyperparams={**s.hyperparams, "learning_rate":
                                                   jnp.asarray(0.002)}))):
            def step(carry, g, tx=tx, apply=apply):
                params, state = carry
                updates, state = tx.update(g, state, params)
                return (apply(params, updates), state), None

            carry, _ = jax.lax.scan(step, (PARAMS, tx.init(PARAMS)), half)
            carry = (carry[0], set_rate(carry[1]))
            (params, state), _ = jax.lax.scan(step, carry, rest)
            runs.append((params, state))
        return runs

    (ours, ours_state), (theirs, theirs_state) = both(grads)
    assert float(opt.hyperparams(ours_state)["learning_rate"]) == pytest.approx(0.002)
    assert float(theirs_state.hyperparams["learning_rate"]) == pytest.approx(0.002)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


SCHEDULES = {  # fnn schedule, the optax schedule it equals
    "constant": (schedules.constant(0.1), optax.constant_schedule(0.1)),
    "step_decay": (schedules.step_decay(0.1, every=30, factor=0.5),
                   optax.exponential_decay(0.1, transition_steps=30, decay_rate=0.5,
                                           staircase=True)),
    "exponential_decay": (schedules.exponential_decay(0.1, k=0.01),
                          optax.exponential_decay(0.1, transition_steps=1,
                                                  decay_rate=math.exp(-0.01))),
    "cosine_decay": (schedules.cosine_decay(0.1, 80, end=0.01),
                     optax.cosine_decay_schedule(0.1, 80, alpha=0.1)),
    "linear": (schedules.linear(0.1, 0.01, 50), optax.linear_schedule(0.1, 0.01, 50)),
    "warmup_cosine": (schedules.warmup(schedules.cosine_decay(0.1, 70, end=0.001), 30,
                                       start=0.01),
                      optax.warmup_cosine_decay_schedule(0.01, 0.1, warmup_steps=30,
                                                         decay_steps=100, end_value=0.001)),
    "piecewise_constant": (schedules.piecewise_constant([0.1, 0.01, 0.0005], [40, 70]),
                           optax.piecewise_constant_schedule(0.1, {40: 0.1, 70: 0.05})),
    "join": (schedules.join([schedules.linear(0.0, 0.1, 20), schedules.cosine_decay(0.1, 80)],
                            [20]),
             optax.join_schedules([optax.linear_schedule(0.0, 0.1, 20),
                                   optax.cosine_decay_schedule(0.1, 80)], [20])),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_names(name):
    ours, theirs = jax.jit(lambda steps: tuple(s(steps) for s in SCHEDULES[name]))(
        jnp.arange(120))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-12, atol=1e-15,
                               err_msg=name)


def test_inverse_time_has_no_optax_name():
    """inverse_time(α₀, τ) = α₀τ / max(t, τ): optax's polynomial and exponential schedules
    are not it; written as a plain function it is a valid optax schedule."""
    ours = schedules.inverse_time(0.1, tau=10)(np.arange(50))
    np.testing.assert_allclose(np.asarray(ours), 0.1 * 10 / np.maximum(np.arange(50), 10.0),
                               rtol=1e-15)
