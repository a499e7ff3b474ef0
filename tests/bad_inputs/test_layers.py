"""Bad input to layers, activations and losses: a clear error at the user's call that names
the argument and what was expected, or (for inputs that are fine) the right result."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
import init
from fnn import losses

KEY = jax.random.key(0)


def _dense_params(features=3, inputs=4):
    return fnn.Dense(features).init(KEY, (-1, inputs))[1]


def _batchnorm():
    layer = fnn.BatchNorm()
    _, params, state = layer.init(KEY, (-1, 4))
    return layer, params, state


def _embedding():
    layer = fnn.Embedding(10, 4)
    return layer, layer.init(KEY, (-1, 2))[1]


def _conv(padding="VALID"):
    layer = fnn.Conv2D(2, 5, padding=padding)
    return layer, layer.init(KEY, (-1, 8, 8, 1))[1]


BAD = [  # (id, call, exception, the message must contain — literal text)
    # constructors
    ("Dense(0)", lambda: fnn.Dense(0), ValueError, "Dense: features must be an int >= 1; got 0."),
    ("Dense(-3)", lambda: fnn.Dense(-3), ValueError, "features must be an int >= 1; got -3"),
    ("Dense(2.5)", lambda: fnn.Dense(2.5), TypeError, "features must be an int >= 1; got float 2.5"),
    ("Dense('3')", lambda: fnn.Dense("3"), TypeError, "features must be an int >= 1; got str '3'"),
    ("Dense(True)", lambda: fnn.Dense(True), TypeError, "features must be an int >= 1; got bool"),
    ("Dense w_init=3", lambda: fnn.Dense(3, w_init=3), TypeError,
     "Dense: w_init must be an initializer (key, shape, dtype) -> array"),
    ("Dense w_init factory uncalled", lambda: fnn.Dense(3, w_init=init.he_normal).init(KEY, (-1, 2)),
     TypeError, "Initializer factories are called, e.g. w_init=init.he_normal()"),
    ("Dense b_init wrong shape",
     lambda: fnn.Dense(3, b_init=lambda k, s, d: jnp.zeros((1, 3), d)).init(KEY, (-1, 2)),
     ValueError, "Dense: b_init returned shape (1, 3); expected (3,)"),
    ("Conv2D kernel_size '3'", lambda: fnn.Conv2D(4, "3"), TypeError,
     "Conv2D: kernel_size must be an int >= 1 or a pair of them; got '3'"),
    ("Conv2D kernel_size 2.5", lambda: fnn.Conv2D(4, 2.5), TypeError, "kernel_size must be an int"),
    ("Conv2D kernel_size (3,)", lambda: fnn.Conv2D(4, (3,)), ValueError,
     "kernel_size must be an int >= 1 or a pair of them; got (3,)"),
    ("Conv2D stride 0", lambda: fnn.Conv2D(4, 3, stride=0), ValueError,
     "Conv2D: stride must be an int >= 1; got 0"),
    ("Conv2D dilation (1, 0)", lambda: fnn.Conv2D(4, 3, dilation=(1, 0)), ValueError,
     "dilation must be an int >= 1"),
    ("Conv2D padding 'FULL'", lambda: fnn.Conv2D(4, padding="FULL"), ValueError,
     "padding must be 'SAME', 'VALID', an int >= 0 or ((top, bottom), (left, right))"),
    ("Conv2D padding -1", lambda: fnn.Conv2D(4, padding=-1), ValueError, "padding must be"),
    ("Conv2D padding (1, 1)", lambda: fnn.Conv2D(4, padding=(1, 1)), TypeError,
     "((top, bottom), (left, right)) of ints >= 0; got (1, 1)"),
    ("Conv2D padding fractional", lambda: fnn.Conv2D(4, padding=((1.5, 0), (0, 0))), TypeError,
     "padding must be"),
    ("Conv2D features 0", lambda: fnn.Conv2D(0), ValueError, "Conv2D: features must be an int >= 1"),
    ("MaxPool2D window 0", lambda: fnn.MaxPool2D(0), ValueError, "MaxPool2D: window must be"),
    ("AvgPool2D stride 0", lambda: fnn.AvgPool2D(2, stride=0), ValueError,
     "AvgPool2D: stride must be an int >= 1"),
    ("MaxPool2D padding >= window", lambda: fnn.MaxPool2D(2, padding=2), ValueError,
     "MaxPool2D: padding 2 must be smaller than the window (2, 2)"),
    ("AvgPool2D padding >= window", lambda: fnn.AvgPool2D(2, padding=((0, 2), (0, 0))), ValueError,
     "must be smaller than the window"),
    ("Dropout(1.0)", lambda: fnn.Dropout(1.0), ValueError,
     "Dropout: rate (the drop probability) must be in [0, 1); got 1.0."),
    ("Dropout(-0.1)", lambda: fnn.Dropout(-0.1), ValueError, "rate (the drop probability) must be in"),
    ("Dropout(nan)", lambda: fnn.Dropout(float("nan")), ValueError, "must be in [0, 1); got nan"),
    ("Dropout('0.5')", lambda: fnn.Dropout("0.5"), TypeError,
     "Dropout: rate (the drop probability) must be a real number in [0, 1); got str '0.5'."),
    ("Dropout(None)", lambda: fnn.Dropout(None), TypeError, "rate (the drop probability) must be a"),
    ("Dropout(array of 2)", lambda: fnn.Dropout(np.array([0.5, 0.5])), ValueError,
     "rate (the drop probability) must be a scalar in [0, 1); got an array of shape (2,)"),
    ("BatchNorm decay 1.5", lambda: fnn.BatchNorm(decay=1.5), ValueError,
     "BatchNorm: decay must be in [0, 1]; got 1.5"),
    ("BatchNorm decay -0.1", lambda: fnn.BatchNorm(decay=-0.1), ValueError, "decay must be in [0, 1]"),
    ("BatchNorm decay '0.9'", lambda: fnn.BatchNorm(decay="0.9"), TypeError,
     "decay must be a real number in [0, 1]; got str"),
    ("BatchNorm eps 0", lambda: fnn.BatchNorm(eps=0.0), ValueError, "BatchNorm: eps must be in (0, inf)"),
    ("BatchNorm eps inf", lambda: fnn.BatchNorm(eps=float("inf")), ValueError, "eps must be in (0, inf)"),
    ("LayerNorm eps -1", lambda: fnn.LayerNorm(eps=-1.0), ValueError, "LayerNorm: eps must be in (0, inf)"),
    ("LeakyRelu '0.1'", lambda: fnn.LeakyRelu("0.1"), TypeError,
     "LeakyRelu: negative_slope must be a real number"),
    ("LeakyRelu nan", lambda: fnn.LeakyRelu(float("nan")), ValueError, "negative_slope must be in"),
    ("Elu None", lambda: fnn.Elu(None), TypeError, "Elu: alpha must be a real number"),
    ("Gelu 'no'", lambda: fnn.Gelu("no"), TypeError, "Gelu: approximate must be a bool; got 'no'"),
    ("Softmax axis 1.5", lambda: fnn.Softmax(1.5), TypeError, "Softmax: axis must be an int"),
    ("LogSoftmax axis '-1'", lambda: fnn.LogSoftmax("-1"), TypeError, "LogSoftmax: axis must be an int"),
    ("Activation(3.0)", lambda: fnn.Activation(3.0), TypeError, "Activation: fn must be a function"),
    ("Activation(a layer)", lambda: fnn.Activation(fnn.Relu()), TypeError,
     "a layer is not an array function"),
    ("Activation name 3", lambda: fnn.Activation(jnp.tanh, 3), TypeError,
     "Activation: name must be a non-empty str"),
    ("serial()", lambda: fnn.serial(), ValueError, "serial: needs at least one layer"),
    ("parallel()", lambda: fnn.parallel(), ValueError, "parallel: needs at least one layer"),
    ("residual()", lambda: fnn.residual(), ValueError, "residual: needs at least one layer"),
    ("serial(non-layer)", lambda: fnn.serial(fnn.Dense(3), None), TypeError,
     "serial: argument 1 is not a layer"),
    ("serial(uncalled constructor)", lambda: fnn.serial(fnn.Relu), TypeError,
     "layer constructors are always called, e.g. fnn.Relu()"),
    ("WeightNorm(uncalled)", lambda: fnn.WeightNorm(fnn.Dense), TypeError,
     "WeightNorm: expected a layer such as fnn.Dense(64)"),
    ("WeightNorm zero w", lambda: fnn.WeightNorm(fnn.Dense(2, w_init=init.zeros())).init(KEY, (-1, 3)),
     ValueError, "initial weight w has all zeros for output unit 0"),
    # keys (issue item 13)
    ("Dense.init int key", lambda: fnn.Dense(3).init(0, (-1, 2)), TypeError,
     "Dense(3).init: key must be a JAX PRNG key, e.g. jax.random.key(0), not the seed 0 itself"),
    ("serial.init int key", lambda: fnn.serial(fnn.Dense(3)).init(5, (-1, 2)), TypeError,
     "serial.init: key must be a JAX PRNG key, e.g. jax.random.key(5)"),
    ("Relu.init str key", lambda: fnn.Relu().init("key", (-1, 2)), TypeError,
     "relu.init: key must be a JAX PRNG key"),
    ("Dropout.apply int key", lambda: fnn.Dropout(0.5).apply({}, {}, jnp.ones((2, 3)), key=0, train=True),
     TypeError, "Dropout(0.5).apply: key must be a JAX PRNG key, e.g. jax.random.key(0), not the seed 0"),
    ("Dropout.apply batch of keys",
     lambda: fnn.Dropout(0.5).apply({}, {}, jnp.ones((2, 3)), key=jax.random.split(KEY, 2), train=True),
     ValueError, "key must be a single PRNG key; got a batch of keys of shape (2,)"),
    ("parallel.apply int key",
     lambda: fnn.parallel(fnn.Relu()).apply({"relu_0": {}}, {"relu_0": {}}, (jnp.ones(2),), key=1),
     TypeError, "parallel.apply: key must be a JAX PRNG key"),
    ("residual.init float key", lambda: fnn.residual(fnn.Relu()).init(1.5, (-1, 2)), TypeError,
     "residual.init: key must be a JAX PRNG key"),
    ("Dense.apply key given positionally",
     lambda: fnn.Dense(3).apply(_dense_params(), {}, jnp.ones((2, 4)), KEY), TypeError,
     "Dense(3).apply() takes 3 positional arguments but 4 were given"),
    ("Dropout missing key", lambda: fnn.Dropout(0.5).apply({}, {}, jnp.ones((2, 3)), train=True),
     ValueError, "Dropout(0.5) needs a PRNG key in training"),
    # init shapes
    ("Dense.init float dim", lambda: fnn.Dense(3).init(KEY, (-1, 2.5)), TypeError,
     "Dense(3): input_shape must be a tuple of ints; got (-1, 2.5)"),
    ("Dense.init int shape", lambda: fnn.Dense(3).init(KEY, 4), TypeError, "input_shape must be a tuple"),
    ("Dense.init rank 1", lambda: fnn.Dense(3).init(KEY, (4,)), ValueError,
     "Dense(3): expected an input shape (batch, ..., features)"),
    ("Conv2D.init rank 3", lambda: fnn.Conv2D(2).init(KEY, (-1, 5, 5)), ValueError,
     "expected an input shape (batch, height, width, channels) [NHWC]"),
    ("Conv2D.init dilated kernel too big",
     lambda: fnn.Conv2D(2, 3, padding="VALID", dilation=3).init(KEY, (-1, 6, 6, 1)), ValueError,
     "gives an empty output (-1, 0, 0, 2)"),
    ("AvgPool2D.init window too big", lambda: fnn.AvgPool2D(7).init(KEY, (-1, 6, 6, 1)), ValueError,
     "AvgPool2D((7, 7)): input shape (-1, 6, 6, 1) gives an empty output"),
    ("Dense.init int dtype", lambda: fnn.Dense(3).init(KEY, (-1, 2), jnp.int32), TypeError,
     "dtype must be floating point"),
    # apply: inputs, params, state
    ("Conv2D.apply input smaller than kernel",
     lambda: _conv()[0].apply(_conv()[1], {}, jnp.ones((1, 3, 3, 1))), ValueError,
     "Conv2D(2, 5): input shape (1, 3, 3, 1) gives an empty output (1, 0, 0, 2)"),
    ("MaxPool2D.apply window larger than input",
     lambda: fnn.MaxPool2D(4).apply({}, {}, jnp.ones((1, 3, 3, 1))), ValueError,
     "MaxPool2D((4, 4)): input shape (1, 3, 3, 1) gives an empty output"),
    ("Dense.apply wrong features", lambda: fnn.Dense(3).apply(_dense_params(), {}, jnp.ones((2, 5))),
     fnn.ParamsError, "Dense(3) expects shape (5, 3) for an input of shape (2, 5); got (4, 3)"),
    ("Dense.apply scalar x", lambda: fnn.Dense(3).apply(_dense_params(), {}, 1.0), ValueError,
     "Dense(3): x must have at least 1 axes; got shape ()"),
    ("Dense.apply str x", lambda: fnn.Dense(3).apply(_dense_params(), {}, "abc"), TypeError,
     "Dense(3): x must be an array"),
    ("Dense.apply params None", lambda: fnn.Dense(3).apply(None, {}, jnp.ones((2, 4))), fnn.ParamsError,
     "Dense(3) expects params with keys ['b', 'w']; got NoneType"),
    ("Dense.apply train 'yes'", lambda: fnn.Dense(3).apply(_dense_params(), {}, jnp.ones((2, 4)), train="yes"),
     TypeError, "Dense(3): train must be a Python bool"),
    ("BatchNorm.apply state None", lambda: _batchnorm()[0].apply(_batchnorm()[1], None, jnp.ones((2, 4))),
     fnn.ParamsError, "state: BatchNorm expects state with keys ['mean', 'var']"),
    ("BatchNorm batch of one", lambda: _batchnorm()[0].apply(*_batchnorm()[1:], jnp.ones((1, 4)), train=True),
     ValueError, "got a batch of 1 example(s) (input shape (1, 4))"),
    ("residual body changes the shape at apply",
     lambda: fnn.residual(fnn.Activation(lambda x: x[:, :2], "first_two")).apply(
         {"firsttwo_0": {}}, {"firsttwo_0": {}}, jnp.ones((2, 3))), ValueError,
     "residual: the block maps an input of shape (2, 3) to (2, 2)"),
    ("parallel.apply not a tuple",
     lambda: fnn.parallel(fnn.Relu()).apply({"relu_0": {}}, {"relu_0": {}}, jnp.ones(2)), ValueError,
     "parallel: expected a tuple of 1 inputs"),
    # Embedding, RMSNorm, GroupNorm
    ("Embedding(0, 4)", lambda: fnn.Embedding(0, 4), ValueError,
     "Embedding: num_embeddings must be an int >= 1; got 0."),
    ("Embedding(10, 2.0)", lambda: fnn.Embedding(10, 2.0), TypeError,
     "Embedding: features must be an int >= 1; got float 2.0"),
    ("Embedding embedding_init uncalled",
     lambda: fnn.Embedding(10, 4, embedding_init=init.normal).init(KEY, (-1, 3)), TypeError,
     "Initializer factories are called"),
    ("Embedding float ids", lambda: _embedding()[0].apply(_embedding()[1], {}, jnp.array([[1.0, 2.0]], jnp.float32)),
     TypeError, "Embedding(10, 4): x must be integer ids in [0, 10); got dtype float32 (cast with "
     "x.astype(jnp.int32)"),
    ("Embedding bool ids", lambda: _embedding()[0].apply(_embedding()[1], {}, jnp.array([True])),
     TypeError, "x must be integer ids in [0, 10); got dtype bool."),
    ("Embedding id 10 of 10", lambda: _embedding()[0].apply(_embedding()[1], {}, jnp.array([[0, 10]])),
     ValueError, "Embedding(10, 4): ids must be in [0, 10); got 10 at x[0, 1] (1 of 2 ids out of range)"),
    ("Embedding id -1 (NumPy)", lambda: _embedding()[0].apply(_embedding()[1], {}, np.array([3, -1])),
     ValueError, "got -1 at x[1]"),
    ("Embedding table of the wrong shape",
     lambda: _embedding()[0].apply({"embedding": jnp.ones((4, 10))}, {}, jnp.array([1])),
     fnn.ParamsError, "params['embedding']: Embedding(10, 4) expects shape (10, 4); got (4, 10)"),
    ("Embedding init of a scalar", lambda: fnn.Embedding(10, 4).init(KEY, ()), ValueError,
     "Embedding(10, 4): expected an input shape (batch, ...) of ids"),
    ("RMSNorm eps 0", lambda: fnn.RMSNorm(eps=0.0), ValueError, "RMSNorm: eps must be in (0, inf); got 0.0"),
    ("RMSNorm scale of the wrong shape",
     lambda: fnn.RMSNorm().apply({"scale": jnp.ones(3)}, {}, jnp.ones((2, 4))), fnn.ParamsError,
     "params['scale']: RMSNorm expects shape (4,) for an input of shape (2, 4); got (3,)"),
    ("RMSNorm init (-1,)", lambda: fnn.RMSNorm().init(KEY, (-1,)), ValueError,
     "RMSNorm: expected an input shape (batch, ..., features)"),
    ("GroupNorm(0)", lambda: fnn.GroupNorm(0), ValueError, "GroupNorm: num_groups must be an int >= 1"),
    ("GroupNorm() no groups", lambda: fnn.GroupNorm(), TypeError, "num_groups"),
    ("GroupNorm eps -1", lambda: fnn.GroupNorm(2, eps=-1.0), ValueError, "GroupNorm: eps must be in (0, inf)"),
    ("GroupNorm(3) of 4 channels at init", lambda: fnn.GroupNorm(3).init(KEY, (-1, 5, 5, 4)), ValueError,
     "GroupNorm(3): num_groups=3 must divide the number of channels (the last axis); got 4 channels "
     "(input shape (-1, 5, 5, 4))"),
    ("GroupNorm(2) of 3 channels at apply",
     lambda: fnn.GroupNorm(2).apply({"scale": jnp.ones(3), "offset": jnp.zeros(3)}, {}, jnp.ones((2, 3))),
     ValueError, "num_groups=2 must divide the number of channels (the last axis); got 3 channels"),
    ("GroupNorm of one axis", lambda: fnn.GroupNorm(1).apply(
        {"scale": jnp.ones(3), "offset": jnp.zeros(3)}, {}, jnp.ones(3)), ValueError,
     "GroupNorm(1): x must have at least 2 axes; got shape (3,)"),
    # losses
    ("CE label 3 of 3 classes", lambda: losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3])),
     ValueError, "labels must be class indices in [0, 3) (the logits have 3 classes); got 3 at labels[1]"),
    ("CE label -1", lambda: losses.softmax_cross_entropy(jnp.zeros((2, 3)), [-1, 0]), ValueError,
     "got -1 at labels[0] (1 of 2 labels out of range)"),
    ("CE float class indices", lambda: losses.softmax_cross_entropy(jnp.zeros((3, 4)), jnp.array([0.0, 1.0, 2.0])),
     ValueError, "They look like class indices: pass integers, labels.astype(jnp.int32)"),
    ("CE integer one-hot", lambda: losses.softmax_cross_entropy(jnp.zeros((3, 4)), jnp.eye(4, dtype=jnp.int32)[:3]),
     ValueError, "integer one-hot labels? pass them as floats"),
    ("CE one-hot row of zeros", lambda: losses.softmax_cross_entropy(
        jnp.zeros((2, 3)), jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])), ValueError,
     "labels must be >= 0 and sum to 1 over the class axis; labels[1] sums to 0"),
    ("CE two-hot row", lambda: losses.softmax_cross_entropy(jnp.zeros((1, 3)), jnp.array([[1.0, 1.0, 0.0]])),
     ValueError, "labels[0] sums to 2"),
    ("CE negative probability", lambda: losses.softmax_cross_entropy(
        jnp.zeros((1, 3)), jnp.array([[1.5, -0.5, 0.0]])), ValueError, "with minimum -0.5"),
    ("accuracy label 5", lambda: losses.accuracy(jnp.zeros((2, 3)), jnp.array([5, 0])), ValueError,
     "accuracy: labels must be class indices in [0, 3)"),
    ("BCE label 2", lambda: losses.binary_cross_entropy(jnp.zeros(3), jnp.array([0.0, 2.0, 1.0])),
     ValueError, "binary_cross_entropy: labels must be in [0, 1]; got 2.0 at labels[1]"),
    ("BCE label -1", lambda: losses.binary_cross_entropy(jnp.zeros(2), jnp.array([-1, 1])), ValueError,
     "labels must be in [0, 1]; got -1 at labels[0]"),
    ("BCE label nan", lambda: losses.binary_cross_entropy(jnp.zeros(2), jnp.array([np.nan, 1.0])),
     ValueError, "labels must be in [0, 1]; got nan"),
    ("BCE str labels", lambda: losses.binary_cross_entropy(jnp.zeros(2), np.array(["a", "b"])), TypeError,
     "binary_cross_entropy: labels must be an array of numbers"),
    ("mse (n, 1) vs (n,)", lambda: losses.mse(jnp.ones((3, 1)), jnp.ones(3)), ValueError,
     "mse: predictions (3, 1) and targets (3,) must have the same shape (mse does not broadcast"),
    ("l2 mask missing a leaf", lambda: losses.l2_penalty({"w": jnp.ones((2, 2)), "b": jnp.ones(2)},
                                                         mask={"w": True}),
     ValueError, "only in params: [\"['b']\"]"),
    ("l1 mask of ints", lambda: losses.l1_penalty({"w": jnp.ones((2, 2))}, mask=lambda p: {"w": 1}),
     TypeError, "l1_penalty: mask leaves must be Python bools; got 1 at ['w']"),
]


@pytest.mark.parametrize("call, error, message", [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_input_raises_a_clear_error(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_there_are_many_cases():
    assert len(BAD) >= 30


# ------------------------------------------------------------------ inputs that are fine


def test_numpy_ints_and_lowercase_padding_are_accepted():
    out, params, _ = fnn.Dense(np.int64(3)).init(KEY, (np.int64(-1), np.int32(2)))
    assert out == (-1, 3) and params["w"].shape == (2, 3)
    out, _, _ = fnn.Conv2D(np.int32(2), (np.int64(3), 1), padding="same").init(KEY, (-1, 5, 5, 1))
    assert out == (-1, 5, 5, 2)
    out, _, _ = fnn.Conv2D(2, 3, padding=1).init(KEY, (-1, 5, 5, 1))  # an int p: p on every side
    assert out == (-1, 5, 5, 2)


def test_integer_inputs_give_float_outputs_with_the_right_values():
    x = np.array([[1, 2], [3, 5]])
    for layer in (fnn.BatchNorm(), fnn.LayerNorm()):
        _, params, state = layer.init(KEY, (-1, 2), jnp.float64)
        y, _ = layer.apply(params, state, jnp.asarray(x), train=True)
        assert y.dtype == jnp.float64  # not truncated back to int
    y, _ = fnn.LayerNorm().apply({"scale": jnp.ones(2), "offset": jnp.zeros(2)}, {}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), [[-1 / np.sqrt(1 + 4e-5), 1 / np.sqrt(1 + 4e-5)],
                                               [-1 / np.sqrt(1 + 1e-5), 1 / np.sqrt(1 + 1e-5)]],
                               rtol=1e-12)
    images = jnp.asarray(np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1))
    pooled, _ = fnn.AvgPool2D(2).apply({}, {}, images)
    np.testing.assert_allclose(np.asarray(pooled)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    biggest, _ = fnn.MaxPool2D(2).apply({}, {}, images)
    np.testing.assert_allclose(np.asarray(biggest)[0, :, :, 0], [[5, 7], [13, 15]])


def test_batchnorm_on_one_example_in_evaluation_mode_works():
    layer, params, state = _batchnorm()
    y, same = layer.apply(params, state, jnp.full((1, 4), 2.0))
    np.testing.assert_allclose(np.asarray(y), 2.0 / np.sqrt(1 + 1e-5), rtol=1e-6)
    assert same is state


def test_captured_jnp_hyperparameters_are_accepted():
    layer = fnn.Dropout(jnp.asarray(0.25))
    y, _ = layer.apply({}, {}, jnp.ones((2, 8)), key=KEY, train=True)
    assert set(np.unique(np.asarray(y))) <= {0.0, 1 / 0.75}
    y, _ = fnn.LeakyRelu(np.float32(0.5)).apply({}, {}, jnp.asarray([[-2.0, 1.0]]))
    np.testing.assert_allclose(np.asarray(y), [[-1.0, 1.0]])


def _every_layer():
    from fnn import layer_checks
    return layer_checks.layer_cases()


@pytest.mark.parametrize("name", list(_every_layer()))
def test_every_layer_and_combinator_names_a_bad_key_in_init_and_apply(name):
    """Issue item 13: an int seed as the key, in init and in apply, of every layer."""
    layer, shape = _every_layer()[name]
    init_shape = tuple((-1, *s[1:]) for s in shape) if isinstance(shape[0], tuple) else \
        (-1, *shape[1:])
    with pytest.raises(TypeError, match=r"\.init: key must be a JAX PRNG key, e\.g\. "
                                        r"jax\.random\.key\(0\), not the seed 0 itself"):
        layer.init(0, init_shape)
    _, params, state = layer.init(KEY, init_shape)
    x = tuple(jnp.ones(s) for s in shape) if isinstance(shape[0], tuple) else jnp.ones(shape)
    with pytest.raises(TypeError, match=r"\.apply: key must be a JAX PRNG key.*got the int 3"):
        layer.apply(params, state, x, key=3, train=True)

