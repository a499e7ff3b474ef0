"""fnn layers against independent references: float64 NumPy written from the formulas,
and torch (conv2d, pooling, BatchNorm1d/2d with momentum=0.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn

KEY = jax.random.key(0)


def numpy_conv(x, w, stride, padding, dilation):
    """Direct convolution (cross-correlation) with TensorFlow's SAME padding rule."""
    kh, kw, _, out = w.shape
    ekh, ekw = (kh - 1) * dilation + 1, (kw - 1) * dilation + 1
    if padding == "SAME":
        oh, ow = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
        ph = max((oh - 1) * stride + ekh - x.shape[1], 0)
        pw = max((ow - 1) * stride + ekw - x.shape[2], 0)
        padding = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    if padding != "VALID":
        x = np.pad(x, ((0, 0), *padding, (0, 0)))
    oh = (x.shape[1] - ekh) // stride + 1
    ow = (x.shape[2] - ekw) // stride + 1
    y = np.zeros((x.shape[0], oh, ow, out))
    for n in range(x.shape[0]):
        for i in range(oh):
            for j in range(ow):
                for o in range(out):
                    total = 0.0
                    for di in range(kh):
                        for dj in range(kw):
                            for c in range(x.shape[3]):
                                total += (x[n, i * stride + di * dilation, j * stride + dj * dilation,
                                            c] * w[di, dj, c, o])
                    y[n, i, j, o] = total
    return y


@pytest.mark.parametrize("stride, padding, dilation", [
    (1, "SAME", 1), (2, "VALID", 1), (2, "SAME", 1), (1, "VALID", 2), (1, ((2, 0), (1, 3)), 1)])
def test_conv2d_against_a_direct_numpy_convolution(stride, padding, dilation):
    layer = fnn.Conv2D(3, (3, 2), stride=stride, padding=padding, dilation=dilation)
    out_shape, params, _ = layer.init(KEY, (-1, 7, 6, 2), jnp.float64)
    x = np.random.default_rng(0).normal(size=(2, 7, 6, 2))
    y, _ = layer.apply(params, {}, jnp.asarray(x))
    expected = numpy_conv(x, np.asarray(params["w"]), stride, padding, dilation) + np.asarray(
        params["b"])
    assert y.shape == expected.shape and out_shape == (-1, *expected.shape[1:])
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)


def numpy_pool(x, window, stride, padding, kind):
    """Max or mean over the window positions inside the input (padding excluded)."""
    if padding == "SAME":
        out = [-(-x.shape[1 + a] // stride) for a in range(2)]
        pads = [max((o - 1) * stride + window - x.shape[1 + a], 0) for a, o in enumerate(out)]
        padding = [(p // 2, p - p // 2) for p in pads]
    elif padding == "VALID":
        padding = [(0, 0), (0, 0)]
    fill = -np.inf if kind == "max" else np.nan
    xp = np.pad(x, ((0, 0), *padding, (0, 0)), constant_values=fill)
    oh = (xp.shape[1] - window) // stride + 1
    ow = (xp.shape[2] - window) // stride + 1
    y = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + window, j * stride:j * stride + window]
            y[:, i, j] = patch.max((1, 2)) if kind == "max" else np.nanmean(patch, (1, 2))
    return y


@pytest.mark.parametrize("window, stride, padding", [
    (2, None, "VALID"), (3, 2, "VALID"), (3, 2, "SAME"), (2, 1, "SAME"), (2, 2, ((1, 0), (0, 1)))])
def test_pooling_against_numpy(window, stride, padding):
    x = np.random.default_rng(1).normal(size=(2, 5, 6, 3))
    for layer, kind in ((fnn.MaxPool2D(window, stride, padding), "max"),
                        (fnn.AvgPool2D(window, stride, padding), "avg")):
        out_shape, _, _ = layer.init(KEY, (-1, 5, 6, 3), jnp.float64)
        y, _ = layer.apply({}, {}, jnp.asarray(x))
        expected = numpy_pool(x, window, stride or window, padding, kind)
        assert out_shape == (-1, *expected.shape[1:])
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12)


def test_conv2d_and_pooling_against_torch():
    torch = pytest.importorskip("torch")
    layer = fnn.Conv2D(5, 3, stride=2, padding="VALID", dilation=1)
    _, params, _ = layer.init(KEY, (-1, 11, 11, 3), jnp.float64)
    x = np.random.default_rng(1).normal(size=(2, 11, 11, 3))
    y, _ = layer.apply(params, {}, jnp.asarray(x))
    tx = torch.tensor(x).permute(0, 3, 1, 2)
    tw = torch.tensor(np.asarray(params["w"])).permute(3, 2, 0, 1)  # HWIO -> OIHW
    ty = torch.nn.functional.conv2d(tx, tw, torch.tensor(np.asarray(params["b"])), stride=2)
    np.testing.assert_allclose(np.asarray(y), ty.permute(0, 2, 3, 1).numpy(), rtol=1e-10,
                               atol=1e-12)
    dilated = fnn.Conv2D(2, 3, padding=((2, 2), (2, 2)), dilation=2)
    _, p2, _ = dilated.init(KEY, (-1, 11, 11, 3), jnp.float64)
    y2, _ = dilated.apply(p2, {}, jnp.asarray(x))
    t2 = torch.nn.functional.conv2d(tx, torch.tensor(np.asarray(p2["w"])).permute(3, 2, 0, 1),
                                    torch.tensor(np.asarray(p2["b"])), padding=2, dilation=2)
    np.testing.assert_allclose(np.asarray(y2), t2.permute(0, 2, 3, 1).numpy(), rtol=1e-10,
                               atol=1e-12)
    pooled, _ = fnn.MaxPool2D(3, stride=2).apply({}, {}, jnp.asarray(x))
    tp = torch.nn.functional.max_pool2d(tx, 3, stride=2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(pooled), tp, rtol=1e-12)
    averaged, _ = fnn.AvgPool2D(2).apply({}, {}, jnp.asarray(x))
    ta = torch.nn.functional.avg_pool2d(tx, 2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(averaged), ta, rtol=1e-12)


def test_dense_flatten_and_dtype_promotion():
    x = np.random.default_rng(0).normal(size=(3, 2, 2, 2))
    flat, _ = fnn.Flatten().apply({}, {}, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(flat), x.reshape(3, 8))
    _, params, _ = fnn.Dense(4).init(KEY, (-1, 8), jnp.float64)
    y, _ = fnn.Dense(4).apply(params, {}, flat)
    np.testing.assert_allclose(np.asarray(y), x.reshape(3, 8) @ params["w"] + params["b"],
                               rtol=1e-12)
    with jax.enable_x64(False):  # float32 inputs, bfloat16 params: promoted as x @ w would be
        _, p16, _ = fnn.Conv2D(2, 1).init(KEY, (-1, 4, 4, 1), jnp.bfloat16)
        y, _ = fnn.Conv2D(2, 1).apply(p16, {}, jnp.ones((1, 4, 4, 1), jnp.float32))
        assert y.dtype == jnp.float32


# ------------------------------------------------------------------ normalization


def numpy_batchnorm_run(x_steps, decay=0.9, eps=1e-5):
    """Float64 reference from the formulas (biased batch variance, unbiased running variance)."""
    features = x_steps[0].shape[-1]
    mean, var = np.zeros(features), np.ones(features)
    outputs = []
    for x in x_steps:
        flat = x.reshape(-1, features)
        m = flat.shape[0]
        mu = flat.sum(0) / m
        sigma2 = ((flat - mu) ** 2).sum(0) / m
        outputs.append((x - mu) / np.sqrt(sigma2 + eps))
        mean = decay * mean + (1 - decay) * mu
        var = decay * var + (1 - decay) * sigma2 * m / (m - 1)
    return outputs, mean, var


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 3, 5)])  # after Dense and after Conv2D
def test_batchnorm_against_float64_numpy(shape):
    layer = fnn.BatchNorm()
    _, params, state = layer.init(KEY, shape, jnp.float64)
    np.testing.assert_array_equal(state["mean"], 0)  # init does not update
    np.testing.assert_array_equal(state["var"], 1)
    rng = np.random.default_rng(0)
    gamma, beta = rng.uniform(0.5, 2.0, shape[-1]), rng.normal(size=shape[-1])
    params = {"scale": jnp.asarray(gamma), "offset": jnp.asarray(beta)}
    xs = [rng.normal(2.0, 3.0, size=shape) for _ in range(3)]
    expected, mean, var = numpy_batchnorm_run(xs)
    for x, e in zip(xs, expected):
        y, state = layer.apply(params, state, jnp.asarray(x), train=True)
        np.testing.assert_allclose(np.asarray(y), gamma * e + beta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(state["mean"]), mean, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(state["var"]), var, rtol=1e-12)
    x = rng.normal(size=shape)
    y, same = layer.apply(params, state, jnp.asarray(x))  # evaluation: running statistics
    np.testing.assert_allclose(np.asarray(y), gamma * (x - mean) / np.sqrt(var + 1e-5) + beta,
                               rtol=1e-10, atol=1e-12)
    assert same is state


def test_batchnorm_matches_torch_momentum_0_1_running_statistics():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for shape, torch_layer in [((8, 6), torch.nn.BatchNorm1d(6, momentum=0.1)),
                               ((4, 5, 5, 6), torch.nn.BatchNorm2d(6, momentum=0.1))]:
        torch_layer = torch_layer.double()
        layer = fnn.BatchNorm(decay=0.9)
        _, params, state = layer.init(KEY, shape, jnp.float64)

        def to_torch(x):
            return torch.tensor(x) if x.ndim == 2 else torch.tensor(x).permute(0, 3, 1, 2)

        def from_torch(t):
            t = t.detach()
            return (t if t.ndim == 2 else t.permute(0, 2, 3, 1)).numpy()

        for _ in range(4):
            x = rng.normal(1.0, 2.0, size=shape)
            y, state = layer.apply(params, state, jnp.asarray(x), train=True)
            ty = torch_layer.train()(to_torch(x))
            np.testing.assert_allclose(np.asarray(y), from_torch(ty), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(np.asarray(state["mean"]), torch_layer.running_mean.numpy(),
                                   rtol=1e-12)
        np.testing.assert_allclose(np.asarray(state["var"]), torch_layer.running_var.numpy(),
                                   rtol=1e-12)
        x = rng.normal(size=shape)
        y, _ = layer.apply(params, state, jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(y), from_torch(torch_layer.eval()(to_torch(x))),
                                   rtol=1e-9, atol=1e-10)


def test_layernorm_and_weightnorm_against_their_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 7))
    layer = fnn.LayerNorm()
    _, params, _ = layer.init(KEY, (-1, 7), jnp.float64)
    gamma, beta = rng.uniform(0.5, 2, 7), rng.normal(size=7)
    p = {"scale": jnp.asarray(gamma), "offset": jnp.asarray(beta)}
    mu = x.sum(1, keepdims=True) / 7  # the 1/H the notes' formula drops
    sigma2 = ((x - mu) ** 2).sum(1, keepdims=True) / 7
    expected = gamma * (x - mu) / np.sqrt(sigma2 + 1e-5) + beta
    for train in (True, False):
        np.testing.assert_allclose(np.asarray(layer.apply(p, {}, jnp.asarray(x), train=train)[0]),
                                   expected, rtol=1e-10)
    dense, normed = fnn.Dense(3), fnn.WeightNorm(fnn.Dense(3))
    _, p_dense, _ = dense.init(KEY, (-1, 7), jnp.float64)
    _, p_norm, _ = normed.init(KEY, (-1, 7), jnp.float64)
    assert set(p_norm) == {"v", "g", "b"}
    np.testing.assert_allclose(np.asarray(normed.apply(p_norm, {}, jnp.asarray(x))[0]),
                               np.asarray(dense.apply(p_dense, {}, jnp.asarray(x))[0]), rtol=1e-12)
    v, g = rng.normal(size=(7, 3)), np.array([1.0, 2.0, 3.0])
    y, _ = normed.apply({"v": jnp.asarray(v), "g": jnp.asarray(g), "b": p_norm["b"]}, {},
                        jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), x @ (g * v / np.sqrt((v**2).sum(0))),
                               rtol=1e-12, atol=1e-12)
    conv = fnn.WeightNorm(fnn.Conv2D(2, 2))  # the norm per output channel, over (kh, kw, in)
    _, p_conv, _ = conv.init(KEY, (-1, 4, 4, 3), jnp.float64)
    np.testing.assert_allclose(np.asarray(p_conv["g"]),
                               np.sqrt((np.asarray(p_conv["v"]) ** 2).sum((0, 1, 2))), rtol=1e-12)


# ------------------------------------------------------------------ dropout


def test_dropout_keeps_the_expected_value_and_drops_the_rate():
    rate, draws = 0.3, 4000
    layer = fnn.Dropout(rate)
    x = jnp.asarray(np.linspace(-2.0, 3.0, 50))[None, :]
    ys = jax.vmap(lambda k: layer.apply({}, {}, x, key=k, train=True)[0])(
        jax.random.split(KEY, draws))[:, 0]
    ys = np.asarray(ys)
    dropped = ys == 0
    assert abs(dropped.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / dropped.size)
    np.testing.assert_allclose(ys[~dropped], np.broadcast_to(x / (1 - rate), ys.shape)[~dropped],
                               rtol=1e-12)  # inverted: kept units are scaled by 1/(1 - rate)
    # the mean of many draws is x, per unit (standard error |x| sqrt(rate / (1 - rate) / draws))
    se = np.abs(np.asarray(x[0])) * np.sqrt(rate / (1 - rate) / draws)
    assert np.all(np.abs(ys.mean(0) - np.asarray(x[0])) <= 5 * se + 1e-12)
    other, _ = layer.apply({}, {}, x, key=jax.random.key(1), train=True)
    assert not np.array_equal(np.asarray(other), ys[0])
    same, _ = layer.apply({}, {}, x)  # evaluation: the identity, no key needed
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))
    zero, _ = fnn.Dropout(0.0).apply({}, {}, x, train=True)  # rate 0 needs no key
    np.testing.assert_array_equal(np.asarray(zero), np.asarray(x))


# ------------------------------------------------------------------ activations


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


ACTIVATIONS = {  # name: (layer, function, formula, derivative from the source texts)
    "sigmoid": (fnn.Sigmoid(), fnn.activations.sigmoid, _sigmoid,
                lambda z: _sigmoid(z) * (1 - _sigmoid(z))),
    "tanh": (fnn.Tanh(), fnn.activations.tanh, np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "hard_tanh": (fnn.HardTanh(), fnn.activations.hard_tanh, lambda z: np.clip(z, -1, 1),
                  lambda z: (np.abs(z) <= 1).astype(float)),  # 1 at the kinks ±1, as jax.nn
    "soft_sign": (fnn.SoftSign(), fnn.activations.soft_sign, lambda z: z / (1 + np.abs(z)),
                  lambda z: 1 / (1 + np.abs(z)) ** 2),
    "relu": (fnn.Relu(), fnn.activations.relu, lambda z: np.maximum(z, 0),
             lambda z: (z > 0).astype(float)),  # relu'(0) = 0
    "leaky_relu": (fnn.LeakyRelu(0.1), lambda z: fnn.activations.leaky_relu(z, 0.1),
                   lambda z: np.where(z >= 0, z, 0.1 * z), lambda z: np.where(z >= 0, 1.0, 0.1)),
    "elu": (fnn.Elu(), fnn.activations.elu, lambda z: np.where(z > 0, z, np.expm1(z)),
            lambda z: np.where(z > 0, 1.0, np.exp(z))),
    "gelu": (fnn.Gelu(), fnn.activations.gelu,
             lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3))), None),
}
Z = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_layers_functions_and_derivatives_match_the_formulas(name):
    layer, f, formula, derivative = ACTIVATIONS[name]
    y, _ = layer.apply({}, {}, jnp.asarray(Z)[None])
    np.testing.assert_allclose(np.asarray(y)[0], formula(Z), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(f(jnp.asarray(Z))), formula(Z), rtol=1e-12, atol=1e-15)
    if derivative is not None:
        grads = np.asarray(jax.vmap(jax.grad(f))(jnp.asarray(Z)))
        np.testing.assert_allclose(grads, derivative(Z), rtol=1e-12, atol=1e-15)


def test_softmax_layers_and_a_custom_activation():
    z = np.random.default_rng(0).normal(size=(3, 4)) * 5
    e = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(np.asarray(fnn.Softmax().apply({}, {}, jnp.asarray(z))[0]),
                               e / e.sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(fnn.LogSoftmax().apply({}, {}, jnp.asarray(z))[0]),
                               np.log(e / e.sum(1, keepdims=True)), rtol=1e-12)
    swish = fnn.Activation(lambda x: x * jax.nn.sigmoid(x), "swish")
    np.testing.assert_allclose(np.asarray(swish.apply({}, {}, jnp.asarray(z))[0]),
                               z * _sigmoid(z), rtol=1e-12)
    assert fnn.serial(swish).init(KEY, (-1, 4))[1] == {"swish_0": {}}


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5)])  # sequences and NHWC images
def test_layernorm_normalizes_over_the_last_axis_only(shape):
    """3-D/4-D inputs, where statistics over every non-batch axis would differ."""
    rng = np.random.default_rng(4)
    # every position has its own scale and shift, so the per-position statistics differ
    x = rng.normal(size=shape) * rng.uniform(0.5, 3.0, shape[:-1] + (1,)) + rng.normal(
        size=shape[:-1] + (1,))
    gamma, beta = rng.uniform(0.5, 2.0, shape[-1]), rng.normal(size=shape[-1])
    layer = fnn.LayerNorm()
    out_shape, _, _ = layer.init(KEY, (-1, *shape[1:]), jnp.float64)
    assert out_shape == (-1, *shape[1:])
    y, _ = layer.apply({"scale": jnp.asarray(gamma), "offset": jnp.asarray(beta)}, {},
                       jnp.asarray(x))
    mu = x.sum(-1, keepdims=True) / shape[-1]
    sigma2 = ((x - mu) ** 2).sum(-1, keepdims=True) / shape[-1]
    np.testing.assert_allclose(np.asarray(y), gamma * (x - mu) / np.sqrt(sigma2 + 1e-5) + beta,
                               rtol=1e-10, atol=1e-12)
    torch = pytest.importorskip("torch")
    reference = torch.nn.LayerNorm(shape[-1], eps=1e-5).double()
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(gamma))
        reference.bias.copy_(torch.tensor(beta))
        expected = reference(torch.tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-9, atol=1e-10)
