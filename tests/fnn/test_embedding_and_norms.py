"""Embedding, RMSNorm and GroupNorm against float64 NumPy written from their formulas and
against flax.linen's Embed, RMSNorm and GroupNorm on the same params; dtypes; a model of them
through the gradient checker."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
import init

KEY = jax.random.key(0)


def numpy_rmsnorm(x, scale, eps):
    return x / np.sqrt((x ** 2).sum(-1, keepdims=True) / x.shape[-1] + eps) * scale


def numpy_groupnorm(x, scale, offset, groups, eps):
    """Per example and group: the mean and biased variance over the non-batch positions and the
    group's channels, written as loops over examples and groups."""
    y = np.empty_like(x)
    size = x.shape[-1] // groups
    for n in range(x.shape[0]):
        for g in range(groups):
            block = x[n, ..., g * size:(g + 1) * size]
            mu = block.sum() / block.size
            sigma2 = ((block - mu) ** 2).sum() / block.size
            y[n, ..., g * size:(g + 1) * size] = (block - mu) / np.sqrt(sigma2 + eps)
    return y * scale + offset


def _data(shape, seed=0):
    """Inputs whose positions and channels have their own scale and shift, so statistics over
    the wrong axes would differ."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * rng.uniform(0.5, 3.0, shape) + rng.normal(size=shape[-1])
    return x, rng.uniform(0.5, 2.0, shape[-1]), rng.normal(size=shape[-1])


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("eps", [None, 0.1])
def test_rmsnorm_against_float64_numpy_and_flax(shape, eps):
    x, gamma, _ = _data(shape)
    layer = fnn.RMSNorm() if eps is None else fnn.RMSNorm(eps=eps)
    out_shape, params, state = layer.init(KEY, (-1, *shape[1:]), jnp.float64)
    assert out_shape == (-1, *shape[1:]) and state == {}
    np.testing.assert_array_equal(np.asarray(params["scale"]), np.ones(shape[-1]))
    y, _ = layer.apply({"scale": jnp.asarray(gamma)}, {}, jnp.asarray(x))
    expected = numpy_rmsnorm(x, gamma, 1e-6 if eps is None else eps)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-13)
    nn = pytest.importorskip("flax.linen")
    theirs = nn.RMSNorm(epsilon=1e-6 if eps is None else eps, param_dtype=jnp.float64)
    expected = theirs.apply({"params": {"scale": jnp.asarray(gamma)}}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("shape, groups", [((4, 6), 2), ((2, 3, 4, 6), 3), ((2, 3, 4, 6), 1),
                                           ((2, 5, 6), 6)])
def test_groupnorm_against_float64_numpy_and_flax(shape, groups):
    x, gamma, beta = _data(shape, seed=1)
    layer = fnn.GroupNorm(groups)
    out_shape, params, state = layer.init(KEY, (-1, *shape[1:]), jnp.float64)
    assert out_shape == (-1, *shape[1:]) and state == {}
    np.testing.assert_array_equal(np.asarray(params["scale"]), np.ones(shape[-1]))
    np.testing.assert_array_equal(np.asarray(params["offset"]), np.zeros(shape[-1]))
    mine = {"scale": jnp.asarray(gamma), "offset": jnp.asarray(beta)}
    y, _ = layer.apply(mine, {}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), numpy_groupnorm(x, gamma, beta, groups, 1e-6),
                               rtol=1e-11, atol=1e-12)
    # the same in training and evaluation, and each example alone gives its own output
    np.testing.assert_array_equal(np.asarray(layer.apply(mine, {}, jnp.asarray(x), train=True)[0]),
                                  np.asarray(y))
    alone, _ = layer.apply(mine, {}, jnp.asarray(x[1:2]))
    np.testing.assert_allclose(np.asarray(alone), np.asarray(y[1:2]), rtol=1e-12, atol=1e-13)
    nn = pytest.importorskip("flax.linen")
    theirs = nn.GroupNorm(num_groups=groups, epsilon=1e-6, param_dtype=jnp.float64)
    expected = theirs.apply({"params": {"scale": jnp.asarray(gamma), "bias": jnp.asarray(beta)}},
                            jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-9, atol=1e-10)


def test_groupnorm_with_one_group_per_channel_is_instance_norm_and_torch_agrees():
    x, gamma, beta = _data((2, 3, 4, 4), seed=2)
    y, _ = fnn.GroupNorm(4, eps=1e-5).apply({"scale": jnp.asarray(gamma),
                                             "offset": jnp.asarray(beta)}, {}, jnp.asarray(x))
    mu, var = x.mean((1, 2), keepdims=True), x.var((1, 2), keepdims=True)
    np.testing.assert_allclose(np.asarray(y), (x - mu) / np.sqrt(var + 1e-5) * gamma + beta,
                               rtol=1e-11, atol=1e-12)
    torch = pytest.importorskip("torch")
    reference = torch.nn.GroupNorm(2, 4, eps=1e-5).double()  # NCHW: channels moved to axis 1
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(gamma))
        reference.bias.copy_(torch.tensor(beta))
        expected = reference(torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    y2, _ = fnn.GroupNorm(2, eps=1e-5).apply({"scale": jnp.asarray(gamma),
                                              "offset": jnp.asarray(beta)}, {}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y2), expected, rtol=1e-9, atol=1e-10)


def test_embedding_against_numpy_and_flax():
    layer = fnn.Embedding(7, 4)
    out_shape, params, state = layer.init(KEY, (-1, 3), jnp.float64)
    assert out_shape == (-1, 3, 4) and state == {} and params["embedding"].shape == (7, 4)
    table = np.random.default_rng(3).normal(size=(7, 4))
    ids = np.array([[0, 6, 2], [2, 2, 5]])
    y, _ = layer.apply({"embedding": jnp.asarray(table)}, {}, jnp.asarray(ids, jnp.int32))
    np.testing.assert_array_equal(np.asarray(y), table[ids])
    # the lookup is the one-hot product onehot(ids) E
    np.testing.assert_allclose(np.asarray(y), np.eye(7)[ids] @ table, rtol=1e-15)
    nn = pytest.importorskip("flax.linen")
    theirs = nn.Embed(7, 4, param_dtype=jnp.float64)
    expected = theirs.apply({"params": {"embedding": jnp.asarray(table)}}, jnp.asarray(ids))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))


def test_embedding_initializers():
    _, params, _ = fnn.Embedding(4000, 64).init(KEY, (-1, 1), jnp.float64)
    table = np.asarray(params["embedding"])
    # the default N(0, 1/features): 256000 draws, the std within 1% (about 7 standard errors)
    assert abs(table.std() - 1 / 8) < 1.25e-3 and abs(table.mean()) < 1e-3
    _, params, _ = fnn.Embedding(5, 3, embedding_init=init.constant(0.5)).init(KEY, (-1, 1))
    np.testing.assert_array_equal(np.asarray(params["embedding"]), np.full((5, 3), 0.5))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_low_precision_params_keep_their_dtype(dtype):
    x, gamma, beta = _data((2, 3, 4), seed=4)
    tol = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2, jnp.float16: 3e-3}[dtype]
    cases = [
        (fnn.RMSNorm(), numpy_rmsnorm(x, gamma, 1e-6), {"scale": gamma}),
        (fnn.GroupNorm(2), numpy_groupnorm(x, gamma, beta, 2, 1e-6),
         {"scale": gamma, "offset": beta}),
    ]
    for layer, expected, values in cases:
        _, params, _ = layer.init(KEY, (-1, 3, 4), dtype)
        assert all(p.dtype == dtype for p in params.values())
        params = {k: jnp.asarray(v, dtype) for k, v in values.items()}
        y, _ = layer.apply(params, {}, jnp.asarray(x, dtype))
        assert y.dtype == dtype
        rounded = {k: np.asarray(p, np.float64) for k, p in params.items()}  # the params it got
        if "offset" in rounded:
            expected = numpy_groupnorm(np.asarray(jnp.asarray(x, dtype), np.float64),
                                       rounded["scale"], rounded["offset"], 2, 1e-6)
        else:
            expected = numpy_rmsnorm(np.asarray(jnp.asarray(x, dtype), np.float64),
                                     rounded["scale"], 1e-6)
        np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=tol, atol=tol)
    embedding = fnn.Embedding(5, 3)
    _, params, _ = embedding.init(KEY, (-1, 2), dtype)
    assert params["embedding"].dtype == dtype
    y, _ = embedding.apply(params, {}, jnp.asarray([[4, 0]], jnp.int32))
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y[0], np.float64),
                                  np.asarray(params["embedding"], np.float64)[[4, 0]])


def test_a_model_of_the_new_layers_passes_the_float64_gradient_check():
    model = fnn.serial(fnn.Embedding(10, 6), fnn.GroupNorm(3), fnn.Relu(), fnn.RMSNorm(),
                       fnn.Flatten(), ("head", fnn.Dense(2)))
    out_shape, params, state = model.init(KEY, (-1, 4), jnp.float64)
    assert out_shape == (-1, 2)
    assert list(params) == ["embedding_0", "groupnorm_0", "relu_0", "rmsnorm_0", "flatten_0",
                            "head"]
    rng = np.random.default_rng(5)
    params = jax.tree_util.tree_map(lambda p: p + 0.3 * rng.normal(size=p.shape), params)
    ids = jnp.asarray([[1, 8, 3, 3], [0, 2, 5, 7], [6, 6, 4, 1]])
    labels = jnp.asarray([0, 1, 1])

    def loss(p):
        logits, _ = model.apply(p, state, ids)
        return fnn.losses.softmax_cross_entropy(logits, labels)

    report = fnn.gradcheck.check_grads(loss, params)
    assert report.passed and report.max_error < 1e-6
    # id 9 is never looked up: its row gets no gradient; every other row does
    rows = np.asarray(jax.grad(loss)(params)["embedding_0"]["embedding"])
    assert np.all(rows[9] == 0) and np.all(np.abs(rows[:9]).sum(1) > 0)
