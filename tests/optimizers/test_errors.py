"""Bad input gets a clear error naming the argument and what was expected; tracers pass."""

import re

import jax
import jax.numpy as jnp
import pytest

import optimizers as opt

PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}

HYPERPARAMETERS = [
    (lambda: opt.sgd(-0.1), ValueError, "sgd: learning_rate must be in [0, inf)"),
    (lambda: opt.sgd(float("nan")), ValueError, "sgd: learning_rate must be in [0, inf)"),
    (lambda: opt.adam(b1=1.0), ValueError, "adam: b1 must be in [0, 1)"),
    (lambda: opt.adam(b2=-0.1), ValueError, "adam: b2 must be in [0, 1)"),
    (lambda: opt.adam(eps=-1e-8), ValueError, "adam: eps must be in [0, inf)"),
    (lambda: opt.momentum(momentum=1.5), ValueError, "momentum: momentum must be in [0, 1)"),
    (lambda: opt.rmsprop(decay=1.0), ValueError, "rmsprop: decay must be in [0, 1)"),
    (lambda: opt.rmsprop(momentum=-0.5), ValueError, "rmsprop: momentum must be in [0, 1)"),
    (lambda: opt.adagrad(initial_accumulator=-1.0), ValueError,
     "adagrad: initial_accumulator must be in [0, inf)"),
    (lambda: opt.adamw(weight_decay=-0.1), ValueError, "adamw: weight_decay must be in [0, inf)"),
    (lambda: opt.clip_by_global_norm(0.0), ValueError,
     "clip_by_global_norm: max_norm must be in (0, inf)"),
    (lambda: opt.clip(-1.0), ValueError, "clip: max_delta must be in (0, inf)"),
    (lambda: opt.sgd("0.1"), TypeError, "sgd: learning_rate must be a real number"),
    (lambda: opt.adam(learning_rate=True), TypeError, "adam: learning_rate must be a real number"),
    (lambda: opt.sgd(jnp.array([0.1, 0.2])), ValueError, "sgd: learning_rate must be a scalar"),
    (lambda: opt.momentum(nesterov="yes"), TypeError, "momentum: nesterov must be a bool"),
    (lambda: opt.adam(bias_correction=1), TypeError, "adam: bias_correction must be a bool"),
    (lambda: opt.adam(moment_dtype=jnp.int32), TypeError, "adam: moment_dtype must be a floating"),
    (lambda: opt.accumulate(opt.sgd(0.1), every=0), ValueError, "accumulate: every must be an int in [1"),
    (lambda: opt.accumulate(opt.sgd(0.1), every=2.0), TypeError, "accumulate: every must be a Python int"),
    (lambda: opt.chain(opt.clip(1.0), opt.adam), TypeError, "call it, e.g. adam(...)"),
    (lambda: opt.skip_nonfinite(0.1), TypeError, "skip_nonfinite: tx must be an optimizer"),
]


@pytest.mark.parametrize("index", range(len(HYPERPARAMETERS)))
def test_invalid_constructor_arguments(index):
    make, error, message = HYPERPARAMETERS[index]
    with pytest.raises(error, match=re.escape(message)):
        make()


def test_grads_with_a_different_structure_show_both_structures():
    tx = opt.adam()
    state = tx.init(PARAMS)
    grads = {"w": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
    with pytest.raises(ValueError) as info:
        tx.update(grads, state, None)
    text = str(info.value)
    assert "adam.update: the structure of grads does not match the optimizer state" in text
    assert "PyTreeDef({'bias': *, 'w': *})" in text and "PyTreeDef({'b': *, 'w': *})" in text
    assert "only in grads: ['bias']" in text and "only in the optimizer state: ['b']" in text


def test_grads_with_a_different_structure_than_params_for_stateless_sgd():
    tx = opt.sgd(0.1)
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match=r"only in params: \['b'\]"):
        tx.update({"w": jnp.ones((3, 2))}, state, PARAMS)


def test_grads_with_a_wrong_shape_name_the_leaf():
    tx = opt.momentum()
    state = tx.init(PARAMS)
    grads = {"w": jnp.ones((2, 3)), "b": jnp.zeros(2)}
    with pytest.raises(ValueError, match=re.escape("grads['w'] has shape (2, 3)")):
        tx.update(grads, state, PARAMS)


def test_apply_updates_structure_mismatch():
    with pytest.raises(ValueError, match="structure of updates does not match params"):
        opt.apply_updates(PARAMS, [jnp.ones((3, 2)), jnp.zeros(2)])


def test_integer_params_are_named():
    with pytest.raises(TypeError, match=re.escape("params['step'] has dtype int32")):
        opt.adam().init({"w": jnp.ones(2), "step": jnp.zeros((), jnp.int32)})


def test_adamw_without_params():
    tx = opt.adamw()
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match=re.escape("adamw.update needs the params")):
        tx.update(PARAMS, state)


def test_wrong_state_type():
    with pytest.raises(TypeError, match="state must be the AdamState returned by adam"):
        opt.adam().update(PARAMS, opt.sgd(0.1).init(PARAMS), PARAMS)
    with pytest.raises(TypeError, match="chain.update: state must be the tuple of 2 link states"):
        opt.chain(opt.clip(1.0), opt.sgd(0.1)).update(PARAMS, opt.sgd(0.1).init(PARAMS))


def test_mask_with_wrong_structure():
    tx = opt.adamw(mask={"w": True})
    with pytest.raises(ValueError, match="structure of mask does not match params"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS)


def test_set_hyperparams_errors():
    state = opt.adam(1e-3).init(PARAMS)
    with pytest.raises(ValueError, match="set_hyperparams: learning_rate must be in"):
        opt.set_hyperparams(state, learning_rate=-1.0)
    with pytest.raises(ValueError, match="no settable hyperparameter 'lr'; it has b1, b2, eps, learning_rate"):
        opt.set_hyperparams(state, lr=1.0)
    # a plain function has no known peak (a Schedule's peak is settable: test_schedules_as_data)
    scheduled = opt.adam(lambda step: 1e-3).init(PARAMS)
    with pytest.raises(ValueError, match="learning_rate follows a schedule whose peak cannot be"):
        opt.set_hyperparams(scheduled, learning_rate=1.0)
    chained = opt.chain(opt.adamw(weight_decay=0.1), opt.add_decayed_weights(0.1)).init(PARAMS)
    with pytest.raises(ValueError, match=re.escape("weight_decay is a hyperparameter of several links ((0,), (1,))")):
        opt.set_hyperparams(chained, weight_decay=0.2)
    with pytest.raises(KeyError, match="pass link="):
        opt.hyperparams(chained)["weight_decay"]
    with pytest.raises(ValueError, match="has shape"):
        opt.set_hyperparams(state, learning_rate=jnp.ones(3))


def test_tracers_are_accepted_and_not_checked():
    def build(lr):
        return opt.adam(lr, b1=lr).init(PARAMS).hyperparams["learning_rate"]

    assert float(jax.jit(build)(0.5)) == 0.5
    assert jax.vmap(build)(jnp.array([0.1, 0.2])).shape == (2,)
