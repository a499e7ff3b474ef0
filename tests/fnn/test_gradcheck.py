"""fnn.gradcheck: catches planted bugs by leaf, agrees with jax.test_util, scales directionally."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads as jax_check_grads

from fnn import gradcheck
from fnn.gradcheck import GradientCheckError, check_grads, check_grads_many, numerical_grad


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
    # (the 1e-2 relative bug reads smaller: f's own rounding, 10 ulp(f) / ε, is the floor)
    assert report.worst == "args[0]['b']" and report.errors["args[0]['b']"] > 1e-4


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


def test_report_formatting():
    report = gradcheck.GradCheckReport({"args[0]": 1e-12, "args[1]": 0.5}, 1e-6, "full",
                                       {"args[0]": 1e-12, "args[1]": 0.5},
                                       {"args[0]": 1e-13, "args[1]": None})
    assert report.worst == "args[1]" and not report.passed and report.max_error == 0.5
    text = str(report)
    assert text.count("FAIL") == 1 and text.count("\n") == 2 and "5.00e-01" in text
    error = GradientCheckError(report, "my loss")
    assert "gradient check of 'my loss' failed: args[1] has relative error 5.000e-01" in str(error)


# ------------------------------------------------------------------ unresolvable coordinates


def sign_flipped():
    """x ↦ sin(x) (elementwise) whose custom backward pass returns −cos(x)."""
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    f.defvjp(lambda x: (f(x), x), lambda x, g: (-g * jnp.cos(x),))
    return f


JUMP_AT_0 = jnp.array([0.0, 0.3, 0.7, 1.1])  # f jumps at x[0] = 0


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_a_jump_at_one_coordinate_does_not_hide_a_sign_flipped_gradient(mode):
    flipped = sign_flipped()

    def f(x):
        return jnp.sum(flipped(x[1:])) + jnp.where(x[0] > 0, 1.0, 0.0)

    with pytest.raises(GradientCheckError, match=r"do not converge.*args\[0\] at") as info:
        check_grads(f, JUMP_AT_0, mode=mode)
    report = info.value.report
    assert not report.passed
    if mode == "full":
        # the jump is flagged at its index, the others compared alone: a = −cos, n = cos
        assert [row[0] for row in report.unresolvable["args[0]"]] == [(0,)]
        index, numeric, numeric2, analytic = report.unresolvable["args[0]"][0]
        np.testing.assert_allclose([numeric, numeric2, analytic], [1 / 2e-5, 1 / 4e-5, 0.0])
        assert "args[0] at index (0,)" in str(info.value)
        np.testing.assert_allclose(report.errors["args[0]"], 2.0, rtol=1e-6)
        ignored = check_grads(f, JUMP_AT_0, unresolvable="ignore", raise_on_failure=False)
        assert not ignored.passed and abs(ignored.max_error - 2.0) < 1e-6
    else:  # every random direction crosses the jump: unresolvable, not a pass
        assert [row[0] for row in report.unresolvable["args[0]"]] == [0, 1]


def test_a_jump_alone_is_unresolvable_by_default_and_skipped_on_request():
    def f(x):
        return jnp.sum(jnp.sin(x[1:])) + jnp.where(x[0] > 0, 1.0, 0.0)

    with pytest.raises(GradientCheckError, match=r"args\[0\] at index \(0,\).*"
                                                  r"unresolvable='ignore'"):
        check_grads(f, JUMP_AT_0)
    report = check_grads(f, JUMP_AT_0, unresolvable="ignore")
    assert report.passed and report.max_error < 1e-8 and len(report.unresolvable["args[0]"]) == 1
    assert "1 unresolvable (skipped)" in str(report)
    # a scalar leaf that jumps at the point: nothing left to compare, still not a pass
    scalar = check_grads(lambda t: jnp.where(t > 0, 1.0, 0.0) + t, jnp.array(0.0),
                         raise_on_failure=False)
    assert not scalar.passed and scalar.unresolvable["args[0]"][0][0] == ()


def test_a_kink_within_eps_is_unresolvable_but_one_farther_than_two_eps_is_exact():
    relu_sum = lambda x: jnp.sum(jax.nn.relu(x))  # noqa: E731
    near = jnp.array([3e-6, 0.5, -0.5])  # the kink at 0 is 0.3 ε away from x[0]
    report = check_grads(relu_sum, near, raise_on_failure=False)
    # n(ε) = (x0 + ε) / 2ε, n(2ε) = (x0 + 2ε) / 4ε: they disagree, JAX says 1
    assert [row[0] for row in report.unresolvable["args[0]"]] == [(0,)]
    np.testing.assert_allclose(report.unresolvable["args[0]"][0][1:],
                               [(3e-6 + 1e-5) / 2e-5, (3e-6 + 2e-5) / 4e-5, 1.0])
    far = jnp.array([3e-5, 0.5, -0.5])
    assert check_grads(relu_sum, far).passed


def test_one_noisy_coordinate_does_not_loosen_the_others():
    """x0 curves fast (its differences' error is large but resolvable); x1's small gradient
    has the wrong sign: the leaf-wide floor from x0's noise would let it pass."""
    flipped = sign_flipped()
    c = 2e-5

    def f(x):
        return jnp.sin(100 * x[0]) + c * flipped(x[1])

    x = jnp.array([0.3, 0.5])
    report = check_grads(f, x, raise_on_failure=False)
    assert not report.passed and not report.unresolved
    # x1's own relative error: |−c cos − c cos| / ‖(100 cos 30, c cos 0.5)‖
    expected = 2 * c * np.cos(0.5) / np.hypot(100 * np.cos(30.0), c * np.cos(0.5))
    np.testing.assert_allclose(report.errors["args[0]"], expected, rtol=1e-3)
    right = lambda x: jnp.sin(100 * x[0]) + c * jnp.sin(x[1])  # noqa: E731
    assert check_grads(right, x).passed


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_the_relative_error_divides_by_the_larger_of_both_norms(mode):
    """Analytic 100 × the true gradient: ‖a − n‖ / max(‖a‖, ‖n‖) = 99 / 100 exactly."""
    x = jnp.asarray(np.random.default_rng(3).uniform(0.2, 0.9, size=5))
    report = check_grads(scaled_gradient(100.0), x, mode=mode, raise_on_failure=False)
    np.testing.assert_allclose(report.reverse["args[0]"], 0.99, rtol=1e-6)
    # and 1/100 of it: ‖a − n‖ / ‖n‖ = 0.99 too (the larger norm is now the numeric one)
    report = check_grads(scaled_gradient(0.01), x, mode=mode, raise_on_failure=False)
    np.testing.assert_allclose(report.reverse["args[0]"], 0.99, rtol=1e-6)


def test_a_non_finite_value_at_the_point_is_an_error_not_a_pass():
    x = jnp.array([0.0, 1.0])
    with pytest.raises(ValueError, match="f is not finite at the given arguments"):
        check_grads(lambda x: jnp.sum(jnp.log(x)), x)
    with pytest.raises(ValueError, match=r"check_grads\['bad'\]: f is not finite"):
        check_grads_many({"good": (jnp.sum, (x,)), "bad": (lambda x: jnp.sum(x) / 0.0, (x,))})
    # finite at the point but not within 2ε of it: unresolvable, named
    report = check_grads(lambda x: jnp.sum(jnp.sqrt(x)), jnp.array([1e-6, 1.0]),
                         raise_on_failure=False)
    assert not report.passed and [r[0] for r in report.unresolvable["args[0]"]] == [(0,)]


def test_the_layer_table_names_unresolvable_coordinates():
    from fnn.layer_checks import verdict

    report = check_grads(lambda x: jnp.sum(jax.nn.relu(x)), jnp.array([0.5, 2e-6]),
                         raise_on_failure=False)
    assert verdict(report) == "FAIL (unresolvable: args[0] at [(1,)])"
    assert verdict(check_grads(jnp.sum, jnp.ones(2))) == "ok"
