"""Initializers against their closed forms, jax.nn.initializers and torch.nn.init."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import init

KEY = jax.random.key(0)
SHAPE = (1000, 500)  # fan_in 1000, fan_out 500; 500k samples
N = SHAPE[0] * SHAPE[1]
FAN_IN, FAN_OUT = 1000.0, 500.0
AVG = (FAN_IN + FAN_OUT) / 2


def uniform_case(bound):
    return {"bound": bound, "variance": bound**2 / 3, "kurtosis": 1.8}


def normal_case(variance):
    return {"bound": None, "variance": variance, "kurtosis": 3.0}


CASES = {
    "xavier_uniform": (init.xavier_uniform(), uniform_case(math.sqrt(6 / (FAN_IN + FAN_OUT)))),
    "xavier_uniform_gain": (init.xavier_uniform(gain=2.0),
                            uniform_case(2 * math.sqrt(6 / (FAN_IN + FAN_OUT)))),
    "xavier_normal": (init.xavier_normal(), normal_case(2 / (FAN_IN + FAN_OUT))),
    "he_uniform": (init.he_uniform(), uniform_case(math.sqrt(6 / FAN_IN))),
    "he_normal": (init.he_normal(), normal_case(2 / FAN_IN)),
    "he_normal_leaky": (init.he_normal(negative_slope=0.5), normal_case(2 / (1.25 * FAN_IN))),
    "he_normal_fan_out": (init.he_normal(mode="fan_out"), normal_case(2 / FAN_OUT)),
    "lecun_uniform": (init.lecun_uniform(), uniform_case(math.sqrt(3 / FAN_IN))),
    "lecun_normal": (init.lecun_normal(), normal_case(1 / FAN_IN)),
    "fan_in_uniform": (init.fan_in_uniform(), uniform_case(1 / math.sqrt(FAN_IN))),
    "normal": (init.normal(0.01), normal_case(1e-4)),
    "uniform": (init.uniform(-0.3, 0.3), uniform_case(0.3)),
    "truncated_variance_scaling": (init.variance_scaling(1.0, "fan_avg", "truncated_normal"),
                                   {"bound": 2 * math.sqrt(1 / AVG) / 0.87962566103423978,
                                    "variance": 1 / AVG, "kurtosis": None}),
    "glorot_alias": (init.glorot_uniform(), uniform_case(math.sqrt(6 / (FAN_IN + FAN_OUT)))),
    "kaiming_alias": (init.kaiming_normal(), normal_case(2 / FAN_IN)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_moments_and_bounds_match_the_closed_form(name):
    initializer, expected = CASES[name]
    w = np.asarray(initializer(KEY, SHAPE, jnp.float64))
    variance = expected["variance"]
    # standard errors of the sample mean and variance for this many draws
    kurtosis = expected["kurtosis"] or 2.5
    mean_se = math.sqrt(variance / N)
    var_se = variance * math.sqrt((kurtosis - 1) / N)
    assert abs(w.mean()) < 6 * mean_se
    assert abs(w.var() - variance) < 6 * var_se, (w.var(), variance)
    if expected["bound"] is not None:
        bound = expected["bound"]
        assert np.abs(w).max() <= bound * (1 + 1e-12)
        assert np.abs(w).max() >= 0.99 * bound  # the bound is reached


def test_truncated_normal_keeps_its_underlying_stddev():
    w = np.asarray(init.truncated_normal(0.5)(KEY, SHAPE, jnp.float64))
    assert np.abs(w).max() <= 1.0
    expected = (0.5 * 0.87962566103423978) ** 2
    assert abs(w.var() - expected) < 6 * expected * math.sqrt(1.5 / N)


def test_conv_kernel_fans():
    assert init.compute_fans((3, 3, 16, 32)) == (144.0, 288.0)
    assert init.compute_fans((5, 7)) == (5.0, 7.0)
    assert init.compute_fans(()) == (1.0, 1.0)
    assert init.compute_fans((10,)) == (10.0, 10.0)
    assert init.compute_fans((2, 3, 4, 5, 6)) == (2 * 3 * 4 * 5.0, 2 * 3 * 4 * 6.0)
    assert init.compute_fans((8, 3, 3, 4), in_axis=0, out_axis=-1, batch_axis=1) == (24.0, 12.0)
    w = np.asarray(init.he_normal()(KEY, (5, 5, 64, 128), jnp.float64))
    assert abs(w.var() - 2 / (25 * 64)) < 6 * (2 / 1600) * math.sqrt(2 / w.size)


@pytest.mark.parametrize("shape", [(300, 300), (500, 200), (200, 500), (3, 3, 32, 64)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16],
                         ids=lambda d: jnp.dtype(d).name)
def test_orthogonal(shape, dtype):
    w = init.orthogonal(scale=2.0)(KEY, shape, dtype)
    assert w.dtype == dtype and w.shape == shape
    m = np.asarray(w, np.float64).reshape(-1, shape[-1]) / 2.0
    tol = 1e-5 if dtype in (jnp.float32, jnp.float64) else 0.1
    if m.shape[0] >= m.shape[1]:
        np.testing.assert_allclose(m.T @ m, np.eye(m.shape[1]), atol=tol)
    else:
        np.testing.assert_allclose(m @ m.T, np.eye(m.shape[0]), atol=tol)


def test_jax_orthogonal_fails_for_half_precision_where_ours_works():
    with pytest.raises(Exception):  # noqa: B017 - the point is only that JAX's fails
        jax.nn.initializers.orthogonal()(KEY, (4, 4), jnp.bfloat16)
    assert init.orthogonal()(KEY, (4, 4), jnp.bfloat16).dtype == jnp.bfloat16


ALL = {
    "xavier_uniform": init.xavier_uniform(), "xavier_normal": init.xavier_normal(),
    "he_uniform": init.he_uniform(), "he_normal": init.he_normal(),
    "lecun_uniform": init.lecun_uniform(), "lecun_normal": init.lecun_normal(),
    "fan_in_uniform": init.fan_in_uniform(), "orthogonal": init.orthogonal(),
    "normal": init.normal(), "uniform": init.uniform(), "truncated_normal": init.truncated_normal(),
    "zeros": init.zeros(), "ones": init.ones(), "constant": init.constant(0.3),
    "scaled": init.scaled(init.he_normal(), 0.5),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16],
                         ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", list(ALL))
def test_keys_dtypes_jit_and_vmap(name, dtype):
    f = ALL[name]
    a = f(jax.random.key(1), (16, 8), dtype)
    b = f(jax.random.key(1), (16, 8), dtype)
    c = f(jax.random.key(2), (16, 8), dtype)
    assert a.dtype == dtype and a.shape == (16, 8)
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    random = name not in ("zeros", "ones", "constant")
    assert random == (not np.array_equal(np.asarray(a, np.float32), np.asarray(c, np.float32)))
    jitted = jax.jit(f, static_argnums=(1, 2))(jax.random.key(1), (16, 8), dtype)
    np.testing.assert_allclose(np.asarray(jitted, np.float32), np.asarray(a, np.float32), rtol=1e-6,
                               atol=1e-7)
    many = jax.vmap(lambda k: f(k, (16, 8), dtype))(jax.random.split(jax.random.key(3), 4))
    assert many.shape == (4, 16, 8) and many.dtype == dtype
    if random:
        assert not np.array_equal(np.asarray(many[0], np.float32), np.asarray(many[1], np.float32))


def test_default_dtype_is_float32_and_values_are_constant():
    assert init.xavier_uniform()(KEY, (3, 3)).dtype == jnp.float32
    np.testing.assert_array_equal(init.constant(0.3)(KEY, (2,), jnp.float64), [0.3, 0.3])
    np.testing.assert_array_equal(init.zeros()(KEY, (2, 2)), np.zeros((2, 2)))


JAX_COUNTERPARTS = {
    "xavier_uniform": (init.xavier_uniform(), jax.nn.initializers.glorot_uniform()),
    "xavier_normal": (init.xavier_normal(), jax.nn.initializers.glorot_normal()),
    "he_uniform": (init.he_uniform(), jax.nn.initializers.he_uniform()),
    "he_normal": (init.he_normal(), jax.nn.initializers.he_normal()),
    "lecun_uniform": (init.lecun_uniform(), jax.nn.initializers.lecun_uniform()),
    "lecun_normal": (init.lecun_normal(), jax.nn.initializers.lecun_normal()),
    "conv": (init.he_normal(), jax.nn.initializers.he_normal()),
}


@pytest.mark.parametrize("name", list(JAX_COUNTERPARTS))
def test_same_variance_as_jax_nn_initializers(name):
    ours, theirs = JAX_COUNTERPARTS[name]
    shape = (3, 3, 64, 96) if name == "conv" else SHAPE
    a = np.asarray(ours(jax.random.key(5), shape, jnp.float64))
    b = np.asarray(theirs(jax.random.key(6), shape, jnp.float64))
    assert abs(a.var() / b.var() - 1) < 0.02
    assert not np.array_equal(a, b)


def test_same_bounds_as_torch_nn_init():
    torch = pytest.importorskip("torch")
    t = torch.empty(500, 1000)  # torch stores Linear weights as (out, in)
    torch.nn.init.xavier_uniform_(t)
    ours = np.asarray(init.xavier_uniform()(KEY, SHAPE, jnp.float64))
    assert abs(np.abs(ours).max() / t.abs().max().item() - 1) < 0.01
    torch.nn.init.kaiming_normal_(t, nonlinearity="relu")  # fan_in = 1000
    ours = np.asarray(init.he_normal()(KEY, SHAPE, jnp.float64))
    assert abs(ours.var() / t.var().item() - 1) < 0.02


def test_tree_init_and_scaled():
    shapes = {"dense": {"w": (64, 32), "b": (32,)}, "out": {"w": (32, 10), "b": (10,)}}
    params = init.tree_init(KEY, shapes, init.by_ndim(init.xavier_uniform(), init.constant(0.5)))
    assert params["dense"]["w"].shape == (64, 32)
    np.testing.assert_array_equal(params["out"]["b"], np.full(10, 0.5))
    assert np.abs(params["dense"]["w"]).max() <= math.sqrt(6 / 96)
    # a leaf's values depend on its own path only
    more = init.tree_init(KEY, {**shapes, "extra": {"w": (5, 5)}}, init.xavier_uniform())
    again = init.tree_init(KEY, shapes, init.xavier_uniform())
    np.testing.assert_array_equal(more["dense"]["w"], again["dense"]["w"])
    assert not np.array_equal(again["dense"]["w"][:32, :10], again["out"]["w"])
    by_name = init.tree_init(KEY, shapes, init.by_path(
        lambda path, shape: init.zeros() if path.endswith("['b']") else init.ones()))
    np.testing.assert_array_equal(by_name["dense"]["w"], np.ones((64, 32)))
    np.testing.assert_array_equal(by_name["dense"]["b"], np.zeros(32))
    small = init.scaled(init.uniform(-1.0, 1.0), 0.1)(KEY, (1000,), jnp.float64)
    big = init.uniform(-1.0, 1.0)(KEY, (1000,), jnp.float64)
    np.testing.assert_allclose(small, 0.1 * big, rtol=1e-12)


def test_works_as_a_flax_initializer():
    import flax.linen as nn

    layer = nn.Dense(7, kernel_init=init.he_normal(), bias_init=init.constant(0.2))
    variables = layer.init(KEY, jnp.ones((1, 300)))
    np.testing.assert_allclose(variables["params"]["bias"], 0.2)
    assert abs(float(variables["params"]["kernel"].var()) - 2 / 300) < 2 / 300 * 0.3


BAD = [
    (lambda: init.variance_scaling(1.0, "fan_sum", "normal"), ValueError,
     "mode must be one of fan_in, fan_out, fan_avg; got 'fan_sum'"),
    (lambda: init.variance_scaling(1.0, "fan_in", "cauchy"), ValueError,
     "distribution must be one of uniform, normal, truncated_normal"),
    (lambda: init.variance_scaling(-1.0, "fan_in", "normal"), ValueError, "scale must be >= 0"),
    (lambda: init.normal(-0.1), ValueError, "stddev must be >= 0"),
    (lambda: init.orthogonal(scale=-1.0), ValueError, "scale must be >= 0"),
    (lambda: init.uniform(1.0, -1.0), ValueError, "need low < high"),
    (lambda: init.xavier_uniform()(KEY, (3, 3), jnp.int32), TypeError,
     "dtype must be a floating-point dtype"),
    (lambda: init.xavier_uniform()(0, (3, 3)), TypeError, r"jax.random.key\(0\)"),
    (lambda: init.xavier_uniform()(KEY, (3, -1)), ValueError, "non-negative ints"),
    (lambda: init.he_normal()(KEY, (2, 3, 4)) if False else init.compute_fans((2, 3), in_axis=5),
     ValueError, "cannot compute fans of shape"),
    (lambda: init.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=0)(KEY, (3, 3)),
     ValueError, "must be different axes"),
    (lambda: init.orthogonal()(KEY, (5,)), ValueError, "rank >= 2"),
    (lambda: init.tree_init(KEY, {"w": (2, 2)}, "xavier"), TypeError, "must be an initializer"),
]


@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_input(index):
    make, error, message = BAD[index]
    with pytest.raises(error, match=message):
        make()


def test_zero_init_never_breaks_symmetry_while_xavier_does():
    """The course notes' demonstration: all-zero weights keep every hidden unit identical."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 5)))
    y = jnp.asarray(rng.integers(0, 3, 64))

    def loss(p):
        h = jnp.tanh(x @ p["w1"] + p["b1"])
        z = h @ p["w2"] + p["b2"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], 1))

    def train(w_init):
        k1, k2 = jax.random.split(jax.random.key(0))
        p = {"w1": w_init(k1, (5, 8), jnp.float64), "b1": jnp.zeros(8),
             "w2": w_init(k2, (8, 3), jnp.float64), "b2": jnp.zeros(3)}
        step = jax.jit(lambda p: jax.tree_util.tree_map(lambda a, g: a - 0.5 * g, p,
                                                        jax.grad(loss)(p)))
        for _ in range(50):
            p = step(p)
        return p

    zero = train(init.zeros())
    columns = np.asarray(zero["w1"])
    np.testing.assert_allclose(columns, columns[:, :1] * np.ones((1, 8)), atol=1e-12)
    xavier = train(init.xavier_uniform())
    spread = np.asarray(xavier["w1"]).std(axis=1)
    assert spread.min() > 1e-2  # hidden units differ
