"""fnn.gradcheck: catches planted bugs by leaf, agrees with jax.test_util, scales directionally."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads as jax_check_grads

from fnn import gradcheck
from fnn.gradcheck import GradientCheckError, check_grads, numerical_grad


def scaled_gradient(scale):
    """x ↦ Σ sin(x) whose custom backward pass multiplies the true gradient by ``scale``."""
    @jax.custom_vjp
    def f(x):
        return jnp.sum(jnp.sin(x))

    f.defvjp(lambda x: (f(x), x), lambda x, g: (g * jnp.cos(x) * scale,))
    return f


def model(bug_scale=1.0):
    buggy = scaled_gradient(bug_scale)

    def loss(params, x):
        h = jnp.tanh(x @ params["dense"]["w"] + params["dense"]["b"])
        return jnp.sum(h @ params["out"]) + buggy(params["dense"]["b"])

    rng = np.random.default_rng(0)
    params = {"dense": {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)},
              "out": rng.normal(size=3)}
    return loss, params, rng.normal(size=(5, 4))


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_a_one_percent_bug_on_one_leaf_is_reported_with_its_path(mode):
    loss, params, x = model(bug_scale=1.01)
    with pytest.raises(GradientCheckError) as info:
        check_grads(loss, params, x, mode=mode)
    report = info.value.report
    assert report.worst == "args[0]['dense']['b']"
    assert "args[0]['dense']['b']" in str(info.value)
    assert report.errors["args[0]['dense']['b']"] > 1e-3
    others = {k: v for k, v in report.errors.items() if k != "args[0]['dense']['b']"}
    assert max(others.values()) < 1e-6
    assert report.forward["args[0]['dense']['b']"] is None  # a custom_vjp has no jvp
    good, params, x = model(bug_scale=1.0)
    report = check_grads(good, params, x, mode=mode)
    assert report.passed and set(report.errors) == {
        "args[0]['dense']['b']", "args[0]['dense']['w']", "args[0]['out']", "args[1]"}


def matmul_with_wrong_weight_gradient(scale):
    """x @ w whose custom backward pass scales dL/dw (but not dL/dx) by ``scale``."""
    @jax.custom_vjp
    def matmul(x, w):
        return x @ w

    matmul.defvjp(lambda x, w: (x @ w, (x, w)), lambda res, g: (g @ res[1].T, scale * res[0].T @ g))
    return matmul


def tanh_mlp(sizes, batch):
    """Params, inputs and integer labels of a float64 tanh MLP with ``sizes``."""
    rng = np.random.default_rng(0)
    params = [{"w": rng.normal(size=(a, b)) / np.sqrt(a), "b": rng.normal(size=b) * 0.1}
              for a, b in zip(sizes[:-1], sizes[1:])]
    return params, rng.normal(size=(batch, sizes[0])), np.arange(batch) % sizes[-1]


def tanh_mlp_loss(params, x, labels, matmul=lambda i, h, w: h @ w):
    """Mean cross-entropy of the MLP; ``matmul(i, h, w)`` computes layer i's product."""
    h = x
    for i, layer in enumerate(params):
        h = matmul(i, h, layer["w"]) + layer["b"]
        h = jnp.tanh(h) if i < len(params) - 1 else h
    return -jnp.mean(jax.nn.log_softmax(h)[np.arange(len(labels)), labels])


def test_directional_mode_names_the_one_wrong_weight_matrix_of_an_mlp():
    params, x, labels = tanh_mlp([30, 20, 10, 5], batch=8)
    buggy = matmul_with_wrong_weight_gradient(1.01)

    def loss(params, x, labels):
        return tanh_mlp_loss(params, x, labels,
                             matmul=lambda i, h, w: buggy(h, w) if i == 1 else h @ w)

    report = check_grads(loss, params, x, labels, mode="directional", raise_on_failure=False)
    assert report.worst == "args[0][1]['w']" and report.errors["args[0][1]['w']"] > 1e-3
    assert all(e < 1e-6 for path, e in report.errors.items() if path != "args[0][1]['w']")
    assert "args[2]" not in report.errors  # integer labels are held fixed, not checked


def forward_bug():
    """A custom_jvp whose derivative is off by 1% (forward mode and, through it, reverse)."""
    @jax.custom_jvp
    def f(x):
        return jnp.exp(x)

    f.defjvp(lambda primals, tangents: (jnp.exp(primals[0]), 1.01 * jnp.exp(primals[0]) * tangents[0]))
    return lambda x: jnp.sum(f(x) * jnp.arange(1.0, x.size + 1))


FUNCTIONS = {
    "polynomial": (lambda x: jnp.sum(x**3 - 2 * x), True),
    "matrix": (lambda x: jnp.sum(jnp.linalg.inv(x.reshape(3, 3) + 4 * jnp.eye(3))), True),
    "vector output": (lambda x: jnp.sin(x) * jnp.cos(x[::-1]), True),
    "log-sum-exp": (lambda x: jax.nn.logsumexp(x * 3.0), True),
    "custom_vjp 1% off": (scaled_gradient(1.01), False),
    "custom_vjp right": (scaled_gradient(1.0), True),
    "custom_jvp 1% off": (forward_bug(), False),
    "stop_gradient": (lambda x: jnp.sum(x * jax.lax.stop_gradient(x)), True),  # grad is x, true
}


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_verdicts_agree_with_jax_test_util(name):
    f, correct = FUNCTIONS[name]
    if name == "stop_gradient":  # d/dx (x · sg(x)) is sg(x) = x; finite differences see 2x
        correct = False
    x = jnp.asarray(np.random.default_rng(1).uniform(0.2, 0.9, size=9))
    ours = check_grads(f, x, raise_on_failure=False).passed
    try:
        jax_check_grads(f, (x,), order=1, modes=("rev",), eps=1e-5, atol=1e-6, rtol=1e-6)
        theirs = True
    except AssertionError:
        theirs = False
    assert ours == theirs == correct


def test_numerical_grad_against_closed_forms():
    x = jnp.array([0.3, -1.2, 2.0])
    np.testing.assert_allclose(numerical_grad(lambda x: jnp.sum(x**3), x), 3 * x**2, rtol=1e-9)
    tree = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(0.5)}
    g = numerical_grad(lambda t: jnp.sum(t["a"] ** 2) * jnp.sin(t["b"]), tree)
    np.testing.assert_allclose(g["a"], 2 * tree["a"] * np.sin(0.5), rtol=1e-9)
    np.testing.assert_allclose(g["b"], 5 * np.cos(0.5), rtol=1e-9)


def test_second_order_check_catches_a_wrong_second_derivative():
    @jax.custom_jvp
    def f(x):
        return jnp.sin(x)

    # right first derivative, but its own derivative is zero (cos(x) is not differentiated)
    f.defjvp(lambda p, t: (jnp.sin(p[0]), jax.lax.stop_gradient(jnp.cos(p[0])) * t[0]))
    g = lambda x: jnp.sum(f(x))
    x = jnp.array([0.3, 0.7, 1.1])
    assert check_grads(g, x).passed
    with pytest.raises(GradientCheckError, match="of grad"):
        check_grads(g, x, order=2)
    assert check_grads(lambda x: jnp.sum(jnp.sin(x)), x, order=2).passed


def test_directional_mode_reports_every_leaf_of_an_mlp():
    params, x, labels = tanh_mlp([64, 48, 32, 10], batch=16)

    def loss(params):
        return tanh_mlp_loss(params, x, labels)

    report = check_grads(loss, params, mode="directional", num_directions=3)
    assert report.passed and len(report.errors) == 6
    assert str(report).count("args[0]") == 6


def test_a_derivative_that_is_zero_in_exact_arithmetic_passes_but_a_small_bug_does_not():
    """The bias before a batch normalization has gradient 0: both sides are rounding noise."""
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
    x = rng.normal(size=(6, 4))

    def loss(params, scale=1.0):
        h = x @ params["w"] + scale * params["b"]
        h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)
        return jnp.sum(jnp.sin(h) * jnp.cos(jnp.arange(h.size).reshape(h.shape)))

    for mode in ("full", "directional"):
        report = check_grads(loss, params, mode=mode)
        assert report.passed and report.errors["args[0]['b']"] < 1e-6
        strict = check_grads(loss, params, mode=mode, tiny=1e-300, raise_on_failure=False)
        assert strict.worst == "args[0]['b']" and strict.max_error > 1e-6  # noise vs noise

    # a gradient 1e4 times smaller than the others is still checked relatively
    small = {"w": params["w"], "b": jnp.asarray(rng.normal(size=3))}

    def tiny_leaf(params, bug=1.0):
        return jnp.sum(jnp.tanh(x @ params["w"])) + 1e-4 * scaled_gradient(bug)(params["b"])

    assert check_grads(tiny_leaf, small).passed
    report = check_grads(lambda p: tiny_leaf(p, 1.01), small, raise_on_failure=False)
    assert report.worst == "args[0]['b']" and report.errors["args[0]['b']"] > 1e-3


def test_vector_and_pytree_outputs_and_a_wrong_forward_rule():
    x = jnp.asarray(np.random.default_rng(2).uniform(0.5, 1.5, size=6))
    assert check_grads(lambda x: {"a": jnp.sin(x), "b": (x[:3] * x[3:], jnp.sum(x**2))}, x).passed
    report = check_grads(forward_bug(), x, raise_on_failure=False)
    # a custom_jvp's rule is used by both modes: both disagree with finite differences by 1%
    assert 5e-3 < report.forward["args[0]"] < 2e-2 and 5e-3 < report.reverse["args[0]"] < 2e-2


def test_runs_in_float64_even_when_x64_is_off():
    with jax.enable_x64(False):
        x = jnp.ones(3, jnp.float32)
        assert check_grads(lambda x: jnp.sum(jnp.exp(x)), x).max_error < 1e-8


BAD = [
    (lambda: check_grads(lambda x: x, jnp.ones(2), mode="fast"), ValueError, "mode must be"),
    (lambda: check_grads(lambda x: x), ValueError, "pass the arguments"),
    (lambda: check_grads(lambda x: x, jnp.ones(2), argnums=3), ValueError, "argnums"),
    (lambda: check_grads(lambda x: x, jnp.ones(2), order=3), ValueError, "order must be 1 or 2"),
    (lambda: check_grads(lambda x: x, jnp.ones(2), eps=0.0), ValueError, "eps and tol"),
    (lambda: check_grads(lambda x: x, jnp.ones(2), tol=-1.0), ValueError, "eps and tol"),
    (lambda: check_grads(lambda x: x, jnp.ones(2), mode="directional", num_directions=0),
     ValueError, "num_directions must be an int >= 1"),
    (lambda: check_grads(jnp.ones(2), jnp.ones(2)), TypeError, "f must be a function"),
    (lambda: check_grads(lambda p, y: p["w"][y], {"w": jnp.ones(3)}, jnp.array(1), argnums=1),
     ValueError, r"no float leaves to check in the arguments \(1,\)"),
    (lambda: check_grads(jnp.sum, jnp.ones(2), tiny=0.0), ValueError, "tiny must be a number > 0"),
    (lambda: gradcheck.check_grads_many([(jnp.sin, (jnp.ones(2),))]), TypeError,
     "checks must be a dict"),
    (lambda: numerical_grad(lambda x: x, jnp.ones(2)), ValueError, "f must return a scalar"),
    (lambda: numerical_grad(jnp.sum, jnp.ones(2), eps=-1e-5), ValueError, "eps must be > 0"),
]


@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_input(index):
    make, error, message = BAD[index]
    with pytest.raises(error, match=message):
        make()


def test_report_formatting():
    report = gradcheck.GradCheckReport({"args[0]": 1e-12, "args[1]": 0.5}, 1e-6, "full",
                                       {"args[0]": 1e-12, "args[1]": 0.5},
                                       {"args[0]": 1e-13, "args[1]": None})
    assert report.worst == "args[1]" and not report.passed and report.max_error == 0.5
    text = str(report)
    assert text.count("FAIL") == 1 and text.count("\n") == 2 and "5.00e-01" in text
    error = GradientCheckError(report, "my loss")
    assert "gradient check of 'my loss' failed: args[1] has relative error 5.000e-01" in str(error)
