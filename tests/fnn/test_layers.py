"""fnn layers: shapes, numerics against float64 NumPy and torch, gradient checks, errors."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
import optimizers as opt
from fnn import cli

KEY = jax.random.key(0)


def test_every_layer_and_loss_passes_the_gradient_check_via_the_cli(capsys):
    assert cli.main(["gradcheck"]) == 0
    text = capsys.readouterr().out
    assert "all gradients match" in text
    for name in ("Conv2D", "BatchNorm (conv)", "WeightNorm(Dense)", "Dropout", "softmax_cross_entropy"):
        assert name in text
    assert text.count(" train ") >= 20 and text.count(" eval ") >= 20


def test_gradcheck_catches_a_wrong_layer():
    """The same harness fails on a layer whose backward pass is wrong."""
    from fnn.layer_checks import layer_objective

    @jax.custom_vjp
    def bad_tanh(x):
        return jnp.tanh(x)

    bad_tanh.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2) * 1.01,))
    layer = fnn.Activation(bad_tanh, "bad_tanh")
    with jax.enable_x64(True):
        _, params, state = layer.init(KEY, (3, 4), jnp.float64)
        x = jax.random.normal(KEY, (3, 4), jnp.float64)
        report = fnn.gradcheck.check_grads(layer_objective(layer, state, True, KEY), params, x,
                                           raise_on_failure=False)
    assert not report.passed and report.worst == "args[1]"


# ------------------------------------------------------------------ shapes and names


def test_shape_inference_with_unknown_batch_and_readable_names():
    model = fnn.serial(fnn.Conv2D(8, 3), fnn.BatchNorm(), fnn.Relu(), fnn.MaxPool2D(2),
                       fnn.Conv2D(4, 3, stride=2, padding="VALID"), fnn.AvgPool2D(2, padding="SAME"),
                       fnn.Flatten(), fnn.Dropout(0.5), fnn.Dense(10), fnn.LogSoftmax())
    out_shape, params, state = model.init(KEY, (-1, 28, 28, 1))
    assert out_shape == (-1, 10)
    assert list(params) == ["0_conv2d", "1_batchnorm", "2_relu", "3_maxpool2d", "4_conv2d",
                            "5_avgpool2d", "6_flatten", "7_dropout", "8_dense", "9_logsoftmax"]
    assert params["0_conv2d"]["w"].shape == (3, 3, 1, 8)
    assert params["4_conv2d"]["w"].shape == (3, 3, 8, 4)
    assert set(state["1_batchnorm"]) == {"mean", "var"} and state["2_relu"] == {}
    x = jnp.ones((2, 28, 28, 1))
    y, _ = model.apply(params, state, x)
    assert y.shape == (2, 10)
    assert jax.eval_shape(lambda x: model.apply(params, state, x, key=KEY, train=True)[0],
                          jax.ShapeDtypeStruct((5, 28, 28, 1), jnp.float32)).shape == (5, 10)


def test_parallel_and_residual():
    both = fnn.parallel(fnn.Dense(3), fnn.Dense(5))
    shapes, params, state = both.init(KEY, ((-1, 2), (-1, 4)))
    assert shapes == ((-1, 3), (-1, 5))
    (a, b), _ = both.apply(params, state, (jnp.ones((7, 2)), jnp.ones((7, 4))))
    assert a.shape == (7, 3) and b.shape == (7, 5)
    block = fnn.residual(fnn.Dense(4), fnn.Tanh())
    _, params, state = block.init(KEY, (-1, 4))
    x = jnp.arange(8.0).reshape(2, 4)
    y, _ = block.apply(params, state, x)
    d = params["0_dense"]
    np.testing.assert_allclose(y, x + jnp.tanh(x @ d["w"] + d["b"]), rtol=1e-12)


def test_default_and_custom_initializers():
    _, params, _ = fnn.Dense(300).init(KEY, (-1, 200), jnp.float64)
    bound = np.sqrt(6 / 500)
    assert np.abs(params["w"]).max() <= bound and np.abs(params["w"]).max() > 0.99 * bound
    np.testing.assert_array_equal(params["b"], 0)
    import init
    _, params, _ = fnn.Dense(3, w_init=init.constant(0.5), b_init=init.ones()).init(KEY, (-1, 2))
    np.testing.assert_array_equal(params["w"], np.full((2, 3), 0.5))
    np.testing.assert_array_equal(params["b"], np.ones(3))
    _, params, _ = fnn.Dense(5, w_init=jax.nn.initializers.he_normal()).init(KEY, (-1, 4))
    assert params["w"].shape == (4, 5)


# ------------------------------------------------------------------ numerics


def numpy_conv(x, w, stride, padding, dilation):
    kh, kw, _, out = w.shape
    ekh, ekw = (kh - 1) * dilation + 1, (kw - 1) * dilation + 1
    if padding == "SAME":
        oh, ow = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
        ph = max((oh - 1) * stride + ekh - x.shape[1], 0)
        pw = max((ow - 1) * stride + ekw - x.shape[2], 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    oh = (x.shape[1] - ekh) // stride + 1
    ow = (x.shape[2] - ekw) // stride + 1
    y = np.zeros((x.shape[0], oh, ow, out))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + ekh:dilation, j * stride:j * stride + ekw:dilation]
            y[:, i, j] = np.einsum("nhwc,hwco->no", patch, w)
    return y


@pytest.mark.parametrize("stride, padding, dilation", [(1, "SAME", 1), (2, "VALID", 1),
                                                       (2, "SAME", 1), (1, "VALID", 2)])
def test_conv2d_against_a_direct_numpy_convolution(stride, padding, dilation):
    layer = fnn.Conv2D(4, (3, 2), stride=stride, padding=padding, dilation=dilation)
    out_shape, params, _ = layer.init(KEY, (-1, 9, 8, 3), jnp.float64)
    x = np.random.default_rng(0).normal(size=(2, 9, 8, 3))
    y, _ = layer.apply(params, {}, jnp.asarray(x))
    expected = numpy_conv(x, np.asarray(params["w"]), stride, padding, dilation) + np.asarray(
        params["b"])
    assert y.shape == expected.shape and out_shape == (-1, *expected.shape[1:])
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)


def test_conv2d_and_pooling_against_torch():
    torch = pytest.importorskip("torch")
    layer = fnn.Conv2D(5, 3, stride=2, padding="VALID")
    _, params, _ = layer.init(KEY, (-1, 11, 11, 3), jnp.float64)
    x = np.random.default_rng(1).normal(size=(2, 11, 11, 3))
    y, _ = layer.apply(params, {}, jnp.asarray(x))
    tx = torch.tensor(x).permute(0, 3, 1, 2)
    tw = torch.tensor(np.asarray(params["w"])).permute(3, 2, 0, 1)
    ty = torch.nn.functional.conv2d(tx, tw, torch.tensor(np.asarray(params["b"])), stride=2)
    np.testing.assert_allclose(np.asarray(y), ty.permute(0, 2, 3, 1).numpy(), rtol=1e-10, atol=1e-12)
    pooled, _ = fnn.MaxPool2D(3, stride=2).apply({}, {}, jnp.asarray(x))
    tp = torch.nn.functional.max_pool2d(tx, 3, stride=2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(pooled), tp, rtol=1e-12)
    averaged, _ = fnn.AvgPool2D(2).apply({}, {}, jnp.asarray(x))
    ta = torch.nn.functional.avg_pool2d(tx, 2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(averaged), ta, rtol=1e-12)


def test_avg_pool_same_padding_averages_only_real_positions():
    x = jnp.ones((1, 3, 3, 1))
    y, _ = fnn.AvgPool2D(2, stride=2, padding="SAME").apply({}, {}, x)
    np.testing.assert_allclose(np.asarray(y), np.ones((1, 2, 2, 1)))


def numpy_batchnorm_run(x_steps, decay=0.9, eps=1e-5):
    """Float64 reference from the formulas (biased batch variance, unbiased running variance)."""
    features = x_steps[0].shape[-1]
    mean, var = np.zeros(features), np.ones(features)
    outputs = []
    for x in x_steps:
        flat = x.reshape(-1, features)
        m = flat.shape[0]
        mu, sigma2 = flat.mean(0), flat.var(0)
        outputs.append((x - mu) / np.sqrt(sigma2 + eps))
        mean = decay * mean + (1 - decay) * mu
        var = decay * var + (1 - decay) * sigma2 * m / (m - 1)
    return outputs, mean, var


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 3, 5)])
def test_batchnorm_against_float64_numpy(shape):
    layer = fnn.BatchNorm()
    _, params, state = layer.init(KEY, shape, jnp.float64)
    np.testing.assert_array_equal(state["mean"], 0)  # init does not update
    np.testing.assert_array_equal(state["var"], 1)
    rng = np.random.default_rng(0)
    xs = [rng.normal(2.0, 3.0, size=shape) for _ in range(3)]
    expected, mean, var = numpy_batchnorm_run(xs)
    for x, e in zip(xs, expected):
        y, state = layer.apply(params, state, jnp.asarray(x), train=True)
        np.testing.assert_allclose(np.asarray(y), e, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(state["mean"]), mean, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(state["var"]), var, rtol=1e-12)
    x = rng.normal(size=shape)
    y, same = layer.apply(params, state, jnp.asarray(x))  # evaluation: running statistics
    np.testing.assert_allclose(np.asarray(y), (x - mean) / np.sqrt(var + 1e-5), rtol=1e-10)
    assert same is state


def test_batchnorm_matches_torch_conventions():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for shape, torch_layer in [((8, 6), torch.nn.BatchNorm1d(6, momentum=0.1)),
                               ((4, 5, 5, 6), torch.nn.BatchNorm2d(6, momentum=0.1))]:
        torch_layer = torch_layer.double()
        layer = fnn.BatchNorm(decay=0.9)
        _, params, state = layer.init(KEY, shape, jnp.float64)
        for _ in range(4):
            x = rng.normal(1.0, 2.0, size=shape)
            y, state = layer.apply(params, state, jnp.asarray(x), train=True)
            tx = torch.tensor(x) if len(shape) == 2 else torch.tensor(x).permute(0, 3, 1, 2)
            ty = torch_layer.train()(tx)
            ty = ty if len(shape) == 2 else ty.permute(0, 2, 3, 1)
            np.testing.assert_allclose(np.asarray(y), ty.detach().numpy(), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(np.asarray(state["mean"]), torch_layer.running_mean.numpy(),
                                   rtol=1e-12)
        np.testing.assert_allclose(np.asarray(state["var"]), torch_layer.running_var.numpy(),
                                   rtol=1e-12)


def test_layernorm_and_weightnorm():
    x = np.random.default_rng(0).normal(size=(4, 7))
    layer = fnn.LayerNorm()
    _, params, _ = layer.init(KEY, (-1, 7), jnp.float64)
    y, _ = layer.apply(params, {}, jnp.asarray(x), train=True)
    expected = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-10)
    dense, normed = fnn.Dense(3), fnn.WeightNorm(fnn.Dense(3))
    _, p_dense, _ = dense.init(KEY, (-1, 7), jnp.float64)
    _, p_norm, _ = normed.init(KEY, (-1, 7), jnp.float64)
    assert set(p_norm) == {"v", "g", "b"}
    np.testing.assert_allclose(np.asarray(normed.apply(p_norm, {}, jnp.asarray(x))[0]),
                               np.asarray(dense.apply(p_dense, {}, jnp.asarray(x))[0]), rtol=1e-12)
    v, g = np.asarray(p_norm["v"]), np.asarray([1.0, 2.0, 3.0])
    y, _ = normed.apply({**p_norm, "g": jnp.asarray(g)}, {}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), x @ (g * v / np.linalg.norm(v, axis=0)),
                               rtol=1e-12, atol=1e-12)


def test_dropout_keeps_the_expected_value_and_drops_the_rate():
    layer = fnn.Dropout(0.3)
    x = jnp.full((200, 500), 2.0)
    y, _ = layer.apply({}, {}, x, key=KEY, train=True)
    dropped = float(jnp.mean(y == 0))
    assert abs(dropped - 0.3) < 6 * np.sqrt(0.3 * 0.7 / x.size)
    kept = np.asarray(y)[np.asarray(y) != 0]
    np.testing.assert_allclose(kept, 2.0 / 0.7, rtol=1e-6)
    assert abs(float(y.mean()) - 2.0) < 6 * 2.0 * np.sqrt(0.3 / 0.7 / x.size)
    other, _ = layer.apply({}, {}, x, key=jax.random.key(1), train=True)
    assert not np.array_equal(np.asarray(y), np.asarray(other))
    same, _ = layer.apply({}, {}, x)  # evaluation: identity, no key needed
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))


ACTIVATION_DERIVATIVES = {
    "sigmoid": (fnn.activations.sigmoid, lambda z: (s := 1 / (1 + np.exp(-z))) * (1 - s)),
    "tanh": (fnn.activations.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "hard_tanh": (fnn.activations.hard_tanh, lambda z: (np.abs(z) <= 1).astype(float)),
    "soft_sign": (fnn.activations.soft_sign, lambda z: 1 / (1 + np.abs(z)) ** 2),
    "relu": (fnn.activations.relu, lambda z: (z > 0).astype(float)),
    "leaky_relu": (fnn.activations.leaky_relu, lambda z: np.where(z >= 0, 1.0, 0.01)),
    "elu": (fnn.activations.elu, lambda z: np.where(z > 0, 1.0, np.exp(z))),
}


@pytest.mark.parametrize("name", list(ACTIVATION_DERIVATIVES))
def test_activation_derivatives_match_the_texts(name):
    f, derivative = ACTIVATION_DERIVATIVES[name]
    z = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    grads = np.asarray(jax.vmap(jax.grad(lambda t: f(t)))(jnp.asarray(z)))
    np.testing.assert_allclose(grads, derivative(z), rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ losses


def test_softmax_cross_entropy_against_float64_reference_and_stability():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 5)) * 3
    y = rng.integers(0, 5, 6)
    log_p = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1,
                                                                                      keepdims=True))
    expected = -log_p[np.arange(6), y].mean()
    assert float(fnn.losses.softmax_cross_entropy(z, y)) == pytest.approx(expected, rel=1e-12)
    one_hot = np.eye(5)[y]
    assert float(fnn.losses.softmax_cross_entropy(z, one_hot)) == pytest.approx(expected, rel=1e-12)
    huge = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    value = fnn.losses.softmax_cross_entropy(huge, jnp.array([0, 0]))
    assert float(value) == pytest.approx(1e4, rel=1e-12)  # (0 + 2e4) / 2
    assert bool(jnp.all(jnp.isfinite(jax.grad(fnn.losses.softmax_cross_entropy)(huge,
                                                                               jnp.array([0, 0])))))


def test_binary_cross_entropy_mse_penalties_accuracy():
    z = jnp.array([-800.0, -2.0, 0.0, 3.0, 800.0])
    y = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
    expected = np.mean([800.0, np.log1p(np.exp(-2.0)), np.log(2.0), np.log1p(np.exp(-3.0)), 800.0])
    assert float(fnn.losses.binary_cross_entropy(z, y)) == pytest.approx(expected, rel=1e-12)
    assert float(fnn.losses.mse(jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]))) == 2.0
    params = {"dense": {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([5.0, 5.0])}}
    assert float(fnn.losses.l2_penalty(params)) == 2.5  # ½(1 + 4); biases not penalized
    assert float(fnn.losses.l1_penalty(params)) == 3.0
    everything = lambda p: jax.tree_util.tree_map(lambda _: True, p)
    assert float(fnn.losses.l2_penalty(params, mask=everything)) == 27.5
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert float(fnn.losses.accuracy(logits, jnp.array([1, 0, 0]))) == pytest.approx(2 / 3)


# ------------------------------------------------------------------ errors

BAD = [
    (lambda: fnn.Dense(10).init(KEY, (-1,) * 0), ValueError, r"Dense\(10\): expected an input shape"),
    (lambda: fnn.Conv2D(8, 3).init(KEY, (-1, 64)), ValueError,
     r"Conv2D\(8, 3\): expected an input shape \(batch, height, width, channels\) \[NHWC\].*got \(-1, 64\)"),
    (lambda: fnn.Conv2D(8, 5, padding="VALID").init(KEY, (-1, 3, 3, 1)), ValueError,
     r"Conv2D\(8, 5\): input shape \(-1, 3, 3, 1\) gives an empty output"),
    (lambda: fnn.BatchNorm().init(KEY, (-1,)), ValueError, "BatchNorm: expected an input shape"),
    (lambda: fnn.Dense(0), ValueError, "features must be an int >= 1"),
    (lambda: fnn.Dropout(1.0), ValueError, r"rate \(the drop probability\) must be in \[0, 1\)"),
    (lambda: fnn.serial(fnn.Dense(3), fnn.Relu), TypeError, r"always called, e.g. fnn.Relu\(\)"),
    (lambda: fnn.residual(fnn.Dense(3)).init(KEY, (-1, 4)), ValueError, "needs them equal"),
    (lambda: fnn.Dense(3).init(KEY, (-1, 4), jnp.int32), TypeError, "dtype must be floating"),
    (lambda: fnn.Conv2D(3, padding="FULL"), ValueError, "padding must be"),
]


@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_construction_and_shapes(index):
    make, error, message = BAD[index]
    with pytest.raises(error, match=message):
        make()


def test_params_that_do_not_match_the_model_name_the_path():
    model = fnn.serial(fnn.Dense(4), fnn.Relu(), fnn.serial(fnn.Dense(3), fnn.BatchNorm()))
    _, params, state = model.init(KEY, (-1, 5))
    x = jnp.ones((2, 5))
    wrong = {**params, "2_serial": {**params["2_serial"],
                                    "0_dense": {"w": jnp.ones((5, 3)), "b": jnp.ones(3)}}}
    with pytest.raises(fnn.ParamsError, match=r"params\['2_serial'\]\['0_dense'\]\['w'\]: "
                                              r"Dense\(3\) expects shape \(4, 3\); got \(5, 3\)"):
        model.apply(wrong, state, x)
    missing = {k: v for k, v in params.items() if k != "1_relu"}
    with pytest.raises(fnn.ParamsError, match="missing '1_relu'"):
        model.apply(missing, state, x)
    with pytest.raises(fnn.ParamsError, match=r"\['2_serial'\].*the state is missing '1_batchnorm'"):
        model.apply(params, {**state, "2_serial": {"0_dense": {}}}, x)


def test_missing_dropout_key_says_how_to_pass_one():
    model = fnn.serial(fnn.Dense(4), fnn.Dropout(0.5))
    _, params, state = model.init(KEY, (-1, 3))
    with pytest.raises(ValueError, match=r"needs a PRNG key in training: pass one to apply, e.g. "
                                         r"model.apply\(params, state, x, key=jax.random.key\(0\), "
                                         r"train=True\)"):
        model.apply(params, state, jnp.ones((2, 3)), train=True)


# ------------------------------------------------------------------ training


def test_dense_batchnorm_relu_dropout_model_learns_with_adam_under_jit():
    x, y = fnn.data.load_digits()
    (xtr, ytr), (xv, yv) = fnn.data.train_val_split(jax.random.key(0), (x, y), 0.25)
    model = fnn.serial(fnn.Dense(64), fnn.BatchNorm(), fnn.Relu(), fnn.Dropout(0.2), fnn.Dense(10))
    _, params, state = model.init(jax.random.key(1), (-1, 64))
    tx = opt.adam(3e-3)
    opt_state = tx.init(params)
    traces = []

    @jax.jit
    def step(params, state, opt_state, xb, yb, key):
        traces.append(1)

        def loss(p):
            logits, new_state = model.apply(p, state, xb, key=key, train=True)
            return fnn.losses.softmax_cross_entropy(logits, yb), new_state

        (value, state), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return opt.apply_updates(params, updates), state, opt_state, value

    xtr, ytr = jnp.asarray(xtr), jnp.asarray(ytr)
    for epoch in range(8):
        for i, batch in enumerate(fnn.data.batch_indices(jax.random.key(epoch), len(xtr), 64)):
            params, state, opt_state, value = step(params, state, opt_state, xtr[batch],
                                                   ytr[batch], jax.random.key(1000 * epoch + i))
    assert len(traces) == 1
    logits, _ = model.apply(params, state, jnp.asarray(xv))
    again, _ = model.apply(params, state, jnp.asarray(xv))
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(again))  # deterministic eval
    assert float(fnn.losses.accuracy(logits, jnp.asarray(yv))) > 0.93
