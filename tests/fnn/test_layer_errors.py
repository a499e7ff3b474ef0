"""Bad input to fnn layers gets a clear error at the call that received it."""

import jax
import jax.numpy as jnp
import pytest

import fnn

KEY = jax.random.key(0)

BAD_CONSTRUCTION_AND_INIT = [
    (lambda: fnn.Dense(10).init(KEY, ()), ValueError,
     r"Dense\(10\): expected an input shape \(batch, \.\.\., features\).*got \(\)"),
    (lambda: fnn.Dense(10).init(KEY, (-1, 0)), ValueError, r"Dense\(10\).*got \(-1, 0\)"),
    (lambda: fnn.Dense(10).init(KEY, (64,)), ValueError, r"Dense\(10\).*got \(64,\)"),
    (lambda: fnn.Dense(10).init(KEY, (4, -1)), ValueError,
     r"the batch axis may be -1\); got \(4, -1\)"),
    (lambda: fnn.Dense(10).init(KEY, "64"), TypeError, "input_shape must be a tuple of ints"),
    (lambda: fnn.Conv2D(8, 3).init(KEY, (-1, 64)), ValueError,
     r"Conv2D\(8, 3\): expected an input shape \(batch, height, width, channels\) \[NHWC\].*"
     r"got \(-1, 64\)"),
    (lambda: fnn.Conv2D(8, 5, padding="VALID").init(KEY, (-1, 3, 3, 1)), ValueError,
     r"Conv2D\(8, 5\): input shape \(-1, 3, 3, 1\) gives an empty output"),
    (lambda: fnn.MaxPool2D(4).init(KEY, (-1, 3, 3, 1)), ValueError,
     r"MaxPool2D\(\(4, 4\)\): input shape \(-1, 3, 3, 1\) gives an empty output"),
    (lambda: fnn.AvgPool2D(2).init(KEY, (-1, 8, 8)), ValueError, r"AvgPool2D.*got \(-1, 8, 8\)"),
    (lambda: fnn.BatchNorm().init(KEY, (-1,)), ValueError, "BatchNorm: expected an input shape"),
    (lambda: fnn.Flatten().init(KEY, (-1,)), ValueError, r"Flatten: expected an input shape"),
    (lambda: fnn.Dense(0), ValueError, "features must be an int >= 1"),
    (lambda: fnn.Dense(2.5), TypeError, "features must be an int >= 1; got float 2.5"),
    (lambda: fnn.Conv2D(4, kernel_size=0), ValueError, "kernel_size must be an int >= 1"),
    (lambda: fnn.Conv2D(4, stride=(1, 2, 3)), ValueError, "stride must be an int >= 1"),
    (lambda: fnn.Conv2D(3, padding="FULL"), ValueError, "padding must be 'SAME', 'VALID'"),
    (lambda: fnn.MaxPool2D(2, padding=((1, -1), (0, 0))), ValueError, "padding must be"),
    (lambda: fnn.Dropout(1.0), ValueError, r"rate \(the drop probability\) must be in \[0, 1\)"),
    (lambda: fnn.Dropout(-0.1), ValueError, r"rate \(the drop probability\)"),
    (lambda: fnn.BatchNorm(decay=1.5), ValueError, r"decay must be in \[0, 1\]"),
    (lambda: fnn.BatchNorm(eps=0.0), ValueError, r"eps must be in \(0, inf\)"),
    (lambda: fnn.LayerNorm(eps=-1.0), ValueError, r"eps must be in \(0, inf\)"),
    (lambda: fnn.WeightNorm(fnn.Relu), TypeError, "expected a layer such as fnn.Dense"),
    (lambda: fnn.WeightNorm(fnn.Relu()).init(KEY, (-1, 3)), ValueError,
     "has no weight 'w' to normalize"),
    (lambda: fnn.Activation(3.0), TypeError, "fn must be a function"),
    (lambda: fnn.serial(), ValueError, "needs at least one layer"),
    (lambda: fnn.serial(fnn.Dense(3), fnn.Relu), TypeError,
     r"argument 1 is not a layer \(layer constructors are always called, e.g. fnn.Relu\(\)\)"),
    (lambda: fnn.residual(fnn.Dense(3)).init(KEY, (-1, 4)), ValueError,
     r"residual: the block maps shape \(-1, 4\) to \(-1, 3\); x \+ f\(x\) needs them equal"),
    (lambda: fnn.parallel(fnn.Dense(3), fnn.Dense(2)).init(KEY, (-1, 4)), ValueError,
     "parallel: expected a tuple of 2 input shapes"),
    (lambda: fnn.Dense(3).init(KEY, (-1, 4), jnp.int32), TypeError,
     "Dense\\(3\\): dtype must be floating point.*got int32"),
]


@pytest.mark.parametrize("index", range(len(BAD_CONSTRUCTION_AND_INIT)))
def test_bad_construction_and_shapes_fail_at_init(index):
    make, error, message = BAD_CONSTRUCTION_AND_INIT[index]
    with pytest.raises(error, match=message):
        make()


def nested_model():
    model = fnn.serial(fnn.Dense(4), fnn.Relu(), fnn.serial(fnn.Dense(3), fnn.BatchNorm()))
    _, params, state = model.init(KEY, (-1, 5))
    return model, params, state


def test_params_that_do_not_match_the_model_name_the_path():
    model, params, state = nested_model()
    x = jnp.ones((2, 5))
    wrong = {**params, "serial_0": {**params["serial_0"],
                                    "dense_0": {"w": jnp.ones((5, 3)), "b": jnp.ones(3)}}}
    with pytest.raises(fnn.ParamsError, match=r"params\['serial_0'\]\['dense_0'\]\['w'\]: Dense\(3\) "
                                              r"expects shape \(4, 3\) for an input of shape \(2, 4\); "
                                              r"got \(5, 3\)"):
        model.apply(wrong, state, x)
    missing = {k: v for k, v in params.items() if k != "relu_0"}
    with pytest.raises(fnn.ParamsError, match=r"params: serial expects params with keys.*"
                                              r"missing \['relu_0'\], unexpected \[\]"):
        model.apply(missing, state, x)
    extra = {**params, "dense_1": {}}
    with pytest.raises(fnn.ParamsError, match=r"unexpected \['dense_1'\]"):
        model.apply(extra, state, x)
    with pytest.raises(fnn.ParamsError, match=r"params\['dense_0'\]: Dense\(4\) expects params with "
                                              r"keys \['b', 'w'\]; got \['kernel'\]"):
        model.apply({**params, "dense_0": {"kernel": params["dense_0"]["w"]}}, state, x)
    with pytest.raises(fnn.ParamsError, match=r"params\['relu_0'\]: relu has no params"):
        model.apply({**params, "relu_0": {"w": jnp.ones(2)}}, state, x)


def test_state_that_does_not_match_the_model_names_the_path():
    model, params, state = nested_model()
    x = jnp.ones((2, 5))
    with pytest.raises(fnn.ParamsError, match=r"state\['serial_0'\]: serial expects state with "
                                              r"keys.*missing \['batchnorm_0'\].*pass the state "
                                              r"returned by init"):
        model.apply(params, {**state, "serial_0": {"dense_0": {}}}, x)
    bad = {**state, "serial_0": {**state["serial_0"], "batchnorm_0": {"mean": jnp.zeros(4),
                                                                       "var": jnp.ones(3)}}}
    with pytest.raises(fnn.ParamsError, match=r"state\['serial_0'\]\['batchnorm_0'\]\['mean'\]: "
                                              r"BatchNorm expects shape \(3,\)"):
        model.apply(params, bad, x, train=True)


def test_weightnorm_names_its_own_params():
    layer = fnn.WeightNorm(fnn.Dense(3))
    _, params, _ = layer.init(KEY, (-1, 4))
    with pytest.raises(fnn.ParamsError, match=r"params\['v'\]: Dense\(3\) expects shape \(5, 3\)"):
        layer.apply(params, {}, jnp.ones((2, 5)))
    with pytest.raises(fnn.ParamsError, match=r"params\['g'\]: WeightNorm\(dense\) expects shape"):
        layer.apply({**params, "g": jnp.ones(4)}, {}, jnp.ones((2, 4)))


def test_inputs_that_do_not_fit_name_the_layer_and_both_shapes():
    _, params, state = fnn.Dense(3).init(KEY, (-1, 4))
    with pytest.raises(fnn.ParamsError, match=r"Dense\(3\) expects shape \(6, 3\) for an input of "
                                              r"shape \(2, 6\); got \(4, 3\)"):
        fnn.Dense(3).apply(params, state, jnp.ones((2, 6)))
    conv = fnn.Conv2D(2, 3)
    _, params, state = conv.init(KEY, (-1, 5, 5, 1))
    with pytest.raises(ValueError, match=r"Conv2D\(2, 3\): expected an NHWC input.*got shape "
                                         r"\(5, 5, 1\)"):
        conv.apply(params, state, jnp.ones((5, 5, 1)))
    with pytest.raises(ValueError, match=r"parallel: expected a tuple of 2 inputs; got 3"):
        both = fnn.parallel(fnn.Relu(), fnn.Relu())
        both.apply({"relu_0": {}, "relu_1": {}}, {"relu_0": {}, "relu_1": {}},
                   (jnp.ones(2),) * 3)


def test_missing_dropout_key_says_how_to_pass_one():
    model = fnn.serial(fnn.Dense(4), fnn.Dropout(0.5))
    _, params, state = model.init(KEY, (-1, 3))
    with pytest.raises(ValueError, match=r"Dropout\(0.5\) needs a PRNG key in training: pass one "
                                         r"to apply, e.g. model.apply\(params, state, x, "
                                         r"key=jax.random.key\(0\), train=True\)"):
        model.apply(params, state, jnp.ones((2, 3)), train=True)
    model.apply(params, state, jnp.ones((2, 3)))  # evaluation needs none


def test_train_must_be_a_python_bool_and_batchnorm_needs_a_batch():
    model = fnn.serial(fnn.Dense(4), fnn.BatchNorm())
    _, params, state = model.init(KEY, (-1, 3))
    with pytest.raises(TypeError, match=r"serial: train must be a Python bool.*static_argnames"):
        jax.jit(lambda t: model.apply(params, state, jnp.ones((2, 3)), train=t))(True)
    with pytest.raises(ValueError, match=r"BatchNorm: training needs more than one value per "
                                         r"feature.*shape \(1, 4\)"):
        model.apply(params, state, jnp.ones((1, 3)), train=True)


@pytest.mark.parametrize("build, error, message", [
    (lambda: fnn.serial(("", fnn.Dense(2))), TypeError,
     r"serial: argument 0 names its layer with ''; a name must be a non-empty str"),
    (lambda: fnn.serial((3, fnn.Dense(2))), TypeError, r"argument 0 names its layer with 3"),
    (lambda: fnn.parallel(("a", fnn.Dense(2)), ("a", fnn.Relu())), ValueError,
     r"parallel: the name 'a' is given to arguments 0 and 1; names must be unique"),
    (lambda: fnn.serial(fnn.Dense(2), ("dense_0", fnn.Dense(2))), ValueError,
     r"serial: argument 1's name 'dense_0' is also the automatic name of argument 0"),
    (lambda: fnn.residual(("dense_1", fnn.Dense(2)), fnn.Dense(2)), ValueError,
     r"residual: argument 0's name 'dense_1' is also the automatic name of argument 1"),
    (lambda: fnn.serial(("head", fnn.Dense)), TypeError,
     r"serial: argument 0 is not a layer \(a layer, or a \(name, layer\) pair\)"),
    (lambda: fnn.serial(fnn.Relu), TypeError, r"layer constructors are always called"),
])
def test_bad_layer_names_fail_at_construction(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_params_with_the_old_positional_names_get_a_hint():
    model, params, state = nested_model()
    old = {"0_dense": params["dense_0"], "1_relu": {}, "2_serial": params["serial_0"]}
    with pytest.raises(fnn.ParamsError, match=r"old positional names.*'0_dense' is now 'dense_0'"):
        model.apply(old, state, jnp.ones((2, 5)))
    with pytest.raises(fnn.ParamsError) as info:  # other wrong keys: no such hint
        model.apply({**params, "extra": {}}, state, jnp.ones((2, 5)))
    assert "old positional" not in str(info.value)
