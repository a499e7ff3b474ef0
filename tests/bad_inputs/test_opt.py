"""Bad input to the optimizers package: a clear error naming the argument, raised at the call.

Each case is (what to call, exception type, a regex the message must match; it
names the argument). A few cases check that a value that used to fail or be
silently wrong now gives the right number.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt
from optimizers import schedules as S

PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
GRADS = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
NAN, INF = float("nan"), float("inf")


def step(tx, grads=GRADS, params=PARAMS, state=None):
    return tx.update(grads, tx.init(params) if state is None else state, params)


def switch_with_index(index):
    tx = opt.switch(opt.sgd(0.1), opt.adam(0.1))
    return tx.update(GRADS, tx.init(PARAMS)._replace(index=index), PARAMS)


CASES = {
    "pack multiple_of 0": (lambda: opt.pack({"w": jnp.zeros(3)}, multiple_of=0), ValueError,
                           r"pack: multiple_of must be an int >= 1"),
    # constructors: non-finite and out-of-range numbers
    "sgd lr inf": (lambda: opt.sgd(INF), ValueError, r"sgd: learning_rate must be in \[0, inf\)"),
    "sgd lr nan array": (lambda: opt.sgd(jnp.float32(NAN)), ValueError, "learning_rate"),
    "adam eps nan": (lambda: opt.adam(eps=NAN), ValueError, r"adam: eps must be in"),
    "adagrad eps negative": (lambda: opt.adagrad(eps=-1.0), ValueError, "adagrad: eps"),
    "adagrad h0 inf": (lambda: opt.adagrad(initial_accumulator=INF), ValueError,
                       "initial_accumulator"),
    "rmsprop decay negative": (lambda: opt.rmsprop(decay=-0.1), ValueError, "rmsprop: decay"),
    "momentum nan": (lambda: opt.momentum(momentum=NAN), ValueError, "momentum: momentum"),
    "adamw decay inf": (lambda: opt.adamw(weight_decay=INF), ValueError, "weight_decay"),
    "clip nan": (lambda: opt.clip(NAN), ValueError, r"clip: max_delta must be in \(0, inf\)"),
    "clip negative": (lambda: opt.clip(-1.0), ValueError, "max_delta"),
    "global norm negative": (lambda: opt.clip_by_global_norm(-1.0), ValueError, "max_norm"),
    "decay negative": (lambda: opt.add_decayed_weights(-0.1), ValueError,
                       "add_decayed_weights: weight_decay"),
    "rmsprop flag": (lambda: opt.rmsprop(eps_in_sqrt="no"), TypeError, "eps_in_sqrt"),
    "adagrad flag": (lambda: opt.adagrad(eps_in_sqrt=1), TypeError, "eps_in_sqrt"),
    # schedules given to an optimizer: checked where their values can be extreme
    "negative schedule": (lambda: opt.sgd(S.constant(0.1) - 1.0), ValueError,
                          r"learning_rate must be in \[0, inf\) at every step.*step 0"),
    "nan schedule": (lambda: opt.sgd(lambda t: jnp.nan), ValueError, "learning_rate.*nan"),
    "linear to negative": (lambda: opt.adam(S.linear(0.1, -0.1, 100)), ValueError,
                           "learning_rate.*at step 100"),
    "b1 schedule reaching 1": (lambda: opt.adam(b1=S.linear(0.9, 1.0, 10)), ValueError,
                               r"b1 must be in \[0, 1\).*step 10"),
    "piecewise negative": (lambda: opt.sgd(S.piecewise_constant([0.1, -0.1], [5])), ValueError,
                           "learning_rate.*step 5"),
    "joined piece negative": (lambda: opt.sgd(S.join([S.constant(0.1), S.linear(0.1, -1.0, 5)],
                                                     [10])), ValueError, "step 15"),
    "vector schedule": (lambda: opt.sgd(lambda t: jnp.ones(3)), TypeError,
                        "schedule given as learning_rate must return a real scalar"),
    # schedules' own arguments
    "constant nan": (lambda: S.constant(NAN), ValueError, "constant: value must be a finite"),
    "constant inf": (lambda: S.constant(INF), ValueError, "value"),
    "constant str": (lambda: S.constant("0.1"), TypeError, "constant: value must be a real"),
    "step_decay every 0": (lambda: S.step_decay(0.1, every=0, factor=0.5), ValueError, "every"),
    "step_decay init negative": (lambda: S.step_decay(-0.1, 10, 0.5), ValueError, "init"),
    "exponential k negative": (lambda: S.exponential_decay(0.1, k=-1.0), ValueError, "k must"),
    "inverse_time tau 0": (lambda: S.inverse_time(0.1, tau=0), ValueError, "tau"),
    "cosine decay_steps 0": (lambda: S.cosine_decay(0.1, 0), ValueError, "decay_steps"),
    "cosine end negative": (lambda: S.cosine_decay(0.1, 10, end=-0.1), ValueError, "end"),
    "linear steps float": (lambda: S.linear(0.0, 1.0, steps=1.5), TypeError, "steps"),
    "warmup steps 0": (lambda: S.warmup(0.1, steps=0), ValueError, "warmup: steps"),
    "warmup start nan": (lambda: S.warmup(0.1, steps=5, start=NAN), ValueError, "start"),
    "join not increasing": (lambda: S.join([S.constant(1.0)] * 3, [5, 5]), ValueError,
                            "strictly increasing"),
    "join negative boundary": (lambda: S.join([S.constant(1.0)] * 2, [-1]), ValueError,
                               "boundaries"),
    "piecewise no values": (lambda: S.piecewise_constant([], []), TypeError, "values"),
    "piecewise str value": (lambda: S.piecewise_constant([0.1, "a"], [3]), TypeError,
                            r"values\[1\]"),
    "piecewise float boundary": (lambda: S.piecewise_constant([0.1, 0.2], [2.5]), TypeError,
                                 "boundaries must be ints"),
    "schedule negative step": (lambda: S.cosine_decay(0.1, 10)(-1), ValueError,
                               "steps count from 0; got step -1"),
    "schedule numpy negative step": (lambda: S.constant(0.1)(np.array([0, -2])), ValueError,
                                     "got step -2"),
    "schedule plus nan": (lambda: S.constant(0.1) + NAN, ValueError, "the number"),
    # masks
    "mask of arrays": (lambda: step(opt.adamw(mask=lambda p: jax.tree_util.tree_map(
        lambda x: jnp.ones(x.shape, bool), p))), TypeError, r"mask\['b'\] must be a bool"),
    "mask of ints": (lambda: step(opt.masked(opt.adam(), {"w": 1, "b": 0})), TypeError,
                     "must be a bool"),
    "mask not a prefix": (lambda: step(opt.masked(opt.clip(1.0), {"w": True, "x": False})),
                          ValueError, "structure of mask does not match params"),
    "masked tx": (lambda: opt.masked("adam", {"w": True}), TypeError, "masked: tx"),
    "masked grads structure": (lambda: step(opt.masked(opt.sgd(0.1), {"w": True, "b": True}),
                                            grads={"w": jnp.ones((2, 3))}),
                               ValueError, "structure of grads"),
    # wrapper and chain states
    "switch index too large": (lambda: switch_with_index(jnp.int32(2)), ValueError,
                               r"state.index must be in \[0, 2\).*got 2"),
    "switch index negative": (lambda: switch_with_index(jnp.int32(-1)), ValueError, "index"),
    "switch index float": (lambda: switch_with_index(jnp.float32(1.0)), TypeError,
                           "state.index must be an integer"),
    "switch state length": (lambda: opt.switch(opt.sgd(0.1)).update(
        GRADS, opt.switch(opt.sgd(0.1), opt.sgd(0.2)).init(PARAMS), PARAMS), TypeError,
                            "SwitchState of 1"),
    "chain state length": (lambda: opt.chain(opt.sgd(0.1)).update(
        GRADS, opt.chain(opt.clip(1.0), opt.sgd(0.1)).init(PARAMS), PARAMS), TypeError,
                           "tuple of 1 link"),
    "accumulate state": (lambda: step(opt.accumulate(opt.sgd(0.1), 2),
                                      state=opt.sgd(0.1).init(PARAMS)), TypeError,
                         "accumulate.update: state must be the AccumulateState"),
    "skip state": (lambda: step(opt.skip_nonfinite(opt.sgd(0.1)),
                                state=opt.sgd(0.1).init(PARAMS)), TypeError,
                   "skip_nonfinite.update: state"),
    "accumulate every huge": (lambda: opt.accumulate(opt.sgd(0.1), every=2**40), ValueError,
                              "every"),
    "adam state to adamw": (lambda: step(opt.adamw(), state=opt.adam().init(PARAMS)),
                            ValueError, "different optimizer.*adamw"),
    # set_hyperparams
    "set nan": (lambda: opt.set_hyperparams(opt.adam().init(PARAMS), learning_rate=NAN),
                ValueError, "set_hyperparams: learning_rate must be in"),
    "set batch with a negative": (lambda: opt.set_hyperparams(
        opt.adam().init(PARAMS), learning_rate=np.array([0.1, -0.2])), ValueError,
                                  r"every learning_rate must be in \[0, inf\); got -0.2"),
    "set wrong shape": (lambda: opt.set_hyperparams(opt.adam().init(PARAMS),
                                                    learning_rate=jnp.ones((2, 2))),
                        ValueError, "learning_rate has shape"),
    "set str": (lambda: opt.set_hyperparams(opt.adam().init(PARAMS), b1="0.9"), TypeError,
                "b1 must be a real number"),
    "set init-only": (lambda: opt.set_hyperparams(opt.adagrad().init(PARAMS),
                                                  initial_accumulator=0.1), ValueError,
                       "initial_accumulator is used only by init"),
    "set schedule": (lambda: opt.set_hyperparams(opt.adam().init(PARAMS),
                                                 learning_rate=S.constant(0.1)),
                     TypeError, "learning_rate must be a number, not a schedule"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_clear_error(name):
    call, error, message = CASES[name]
    with pytest.raises(error, match=message):
        call()


def test_a_long_cosine_decay_works_in_32_bit_mode():
    """decay_steps = 1e10 raised OverflowError when called; optax gives 975.528 at step 1e9."""
    import optax

    with jax.enable_x64(False):
        ours = float(S.cosine_decay(1000.0, int(1e10))(int(1e9)))
        theirs = float(optax.cosine_decay_schedule(1000.0, int(1e10))(int(1e9)))
    expected = 1000.0 * 0.5 * (1 + math.cos(math.pi * 0.1))
    assert ours == pytest.approx(expected, rel=1e-6) and theirs == pytest.approx(ours, rel=1e-6)


def test_boundaries_past_int32_are_never_reached():
    lr = S.piecewise_constant([0.1, 0.01], [2**40])
    assert float(lr(2**31 - 2)) == pytest.approx(0.1)
    joined = S.join([S.constant(0.1), S.constant(0.01)], [2**40])
    assert float(joined(10**9)) == pytest.approx(0.1)


def test_join_asks_no_piece_for_a_negative_step():
    seen = []

    def piece(step):
        seen.append(np.asarray(step))
        return jnp.asarray(0.5)

    S.join([S.constant(0.1), piece], [10])(3)
    assert all(np.all(s >= 0) for s in seen)


def test_a_rate_decayed_to_zero_is_zero_not_negative():
    """linear(…, 0) ends at exactly 0, so the step's range guard never turns it into NaN."""
    for init in (1e-3, 0.1, 0.7, 3e-4):
        for steps in (3, 7, 1000):
            assert float(S.linear(init, 0.0, steps)(steps)) == 0.0
