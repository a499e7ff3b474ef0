"""Bad input to schedules as data (a schedule's settable peak): a clear error naming the
hyperparameter and the fix, raised at the call that received it.

Same form as test_opt.py (what to call, exception type, a regex the message must match),
kept in its own file for issue 16 item 4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt
from fnn import train, tuning
from optimizers import schedules as S

PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
GRADS = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
NAN = float("nan")
COSINE = S.cosine_decay(0.1, 10)
NOT_SETTABLE = "learning_rate follows a schedule whose peak cannot be set"


def set_lr(lr, value, **hyper):
    return opt.set_hyperparams(opt.adam(lr, **hyper).init(PARAMS), learning_rate=value)


def step(tx, state):
    return tx.update(GRADS, state, PARAMS)


def parallel_fit(tx, configs):
    x = np.random.default_rng(0).normal(size=(16, 2))
    loss_fn = lambda p, s, batch, key: (jnp.mean((batch[0] @ p["w"] - batch[1]) ** 2), (s, {}))
    state = train.init_train_state({"w": jnp.zeros((2, 1))}, {}, tx)
    return tuning.parallel_fit(loss_fn, tx, state, configs, (x, x[:, :1]), key=jax.random.key(0),
                               epochs=1, batch_size=8)


CASES = {
    # schedules whose peak cannot be set
    "set a plain function": (lambda: set_lr(lambda t: 0.1, 0.2), ValueError,
                             NOT_SETTABLE + ": a plain function step -> value"),
    "set arithmetic with a plain function": (lambda: set_lr(COSINE * (lambda t: 1.0), 0.2),
                                             ValueError, NOT_SETTABLE),
    "set a join with a plain function": (lambda: set_lr(S.join([COSINE, lambda t: 0.1], [5]),
                                                        0.2), ValueError, NOT_SETTABLE),
    "set a warmup of a plain function": (lambda: set_lr(S.warmup(lambda t: 0.1, 5), 0.2),
                                         ValueError, "wrap the function as optimizers.schedules"
                                         r"\.Schedule\(fn, description, probe="),
    "set a zero schedule": (lambda: set_lr(S.constant(0.0), 0.2), ValueError,
                            "or a schedule whose peak is 0, which no factor changes"),
    # peaks out of range, of the wrong kind or shape
    "set a negative peak": (lambda: set_lr(COSINE, -0.1), ValueError,
                            r"set_hyperparams: learning_rate must be in \[0, inf\); got -0.1"),
    "set a nan peak": (lambda: set_lr(COSINE, NAN), ValueError, "learning_rate must be in"),
    "set a b1 peak of 1": (lambda: opt.set_hyperparams(
        opt.adam(b1=S.linear(0.8, 0.9, 10)).init(PARAMS), b1=1.0), ValueError,
                           r"set_hyperparams: b1 must be in \[0, 1\); got 1.0"),
    "set a schedule as the peak": (lambda: set_lr(COSINE, S.cosine_decay(0.2, 10)), TypeError,
                                   "learning_rate must be a number, not a schedule.*set its "
                                   "peak with a number"),
    "set a batch with one bad peak": (lambda: opt.set_hyperparams(
        jax.vmap(lambda _: opt.adam(COSINE).init(PARAMS))(jnp.arange(2)),
        learning_rate=jnp.asarray([0.1, -0.1])), ValueError,
                                      r"every learning_rate must be in \[0, inf\); got -0.1 at "
                                      r"index \(1,\)"),
    "set a peak of another shape": (lambda: set_lr(COSINE, jnp.ones(3)), ValueError,
                                    r"learning_rate has shape \(\) in this state"),
    "set a peak as a str": (lambda: set_lr(COSINE, "0.1"), TypeError,
                            "learning_rate must be a real number"),
    # the peak function
    "peak of a plain function": (lambda: S.peak(lambda t: 0.1), TypeError,
                                 "peak: .* is a plain function step -> value"),
    "peak of a join with a plain function": (lambda: S.peak(S.join([COSINE, lambda t: 0.1],
                                                                   [5])), TypeError,
                                             "whose peak is unknown"),
    "peak 0": (lambda: S.peak(S.linear(0.0, 0.0, 5)), ValueError,
               r"peak: the peak of linear\(0.0, 0.0, steps=5\) is 0"),
    "Schedule scalable not a bool": (lambda: S.Schedule(lambda t: t, "t", scalable=1), TypeError,
                                     "Schedule: scalable must be True or False; got 1"),
    "hyperparams settable not a bool": (lambda: opt.hyperparams(opt.adam().init(PARAMS),
                                                                settable=1), TypeError,
                                        "hyperparams: settable must be True or False"),
    # a state and an optimizer that disagree on whether the peak is kept
    "state of a plain function, optimizer with a peak": (lambda: step(
        opt.adam(COSINE), opt.adam(lambda t: 0.1).init(PARAMS)), ValueError,
        "learning_rate follows a schedule with a settable peak in this optimizer, but the state "
        "keeps no peak for it.*tx.init"),
    "state with a peak, optimizer of a plain function": (lambda: step(
        opt.adam(lambda t: 0.1), opt.adam(COSINE).init(PARAMS)), ValueError,
        "the state keeps a peak for learning_rate, but in this optimizer learning_rate follows a "
        "plain function"),
    "state of a zero schedule, optimizer with a peak": (lambda: step(
        opt.adam(COSINE), opt.adam(S.constant(0.0)).init(PARAMS)), ValueError,
        "keeps no peak for it"),
    # parallel_fit: the configs' values are the peaks
    "parallel_fit on a plain function": (lambda: parallel_fit(
        opt.sgd(lambda t: 0.1), [{"learning_rate": 0.1}]), ValueError, NOT_SETTABLE),
    "parallel_fit negative peak": (lambda: parallel_fit(
        opt.sgd(S.warmup(COSINE, 2)), [{"learning_rate": 0.1}, {"learning_rate": -1e-3}]),
                                   ValueError, r"configs\[1\]: learning_rate must be in"),
    "parallel_fit a schedule as a config": (lambda: parallel_fit(
        opt.sgd(COSINE), [{"learning_rate": COSINE}]), TypeError,
                                            "must be a number, not a schedule"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_clear_error(name):
    call, error, message = CASES[name]
    with pytest.raises(error, match=message):
        call()
