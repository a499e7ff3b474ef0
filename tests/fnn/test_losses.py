"""fnn.losses against float64 references written from the formulas, and their errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import losses


def reference_cross_entropy(z, y):
    """−mean log softmax(z)[y] in float64, with the max subtracted (log-sum-exp)."""
    z = np.asarray(z, np.float64)
    m = z.max(1, keepdims=True)
    log_p = z - m - np.log(np.exp(z - m).sum(1, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean()


def test_softmax_cross_entropy_against_a_float64_reference():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 5)) * 3
    y = rng.integers(0, 5, 6)
    expected = reference_cross_entropy(z, y)
    assert float(losses.softmax_cross_entropy(z, y)) == pytest.approx(expected, rel=1e-12)
    one_hot = np.eye(5)[y]
    assert float(losses.softmax_cross_entropy(z, one_hot)) == pytest.approx(expected, rel=1e-12)
    probs = rng.dirichlet(np.ones(5), 6)  # soft labels: −mean Σ_k p_k log softmax(z)_k
    m = z.max(1, keepdims=True)
    log_p = z - m - np.log(np.exp(z - m).sum(1, keepdims=True))
    assert float(losses.softmax_cross_entropy(z, probs)) == pytest.approx(
        -(probs * log_p).sum(1).mean(), rel=1e-12)
    # its gradient is (softmax(z) − onehot(y)) / N
    grad = jax.grad(losses.softmax_cross_entropy)(jnp.asarray(z), jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(grad), (np.exp(log_p) - one_hot) / 6, rtol=1e-10,
                               atol=1e-15)


def test_softmax_cross_entropy_is_stable_at_logits_of_1e4():
    huge = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [1e4, 1e4, -1e4]])
    labels = jnp.array([0, 0, 1])
    value = losses.softmax_cross_entropy(huge, labels)
    assert float(value) == pytest.approx((0 + 2e4 + np.log(2)) / 3, rel=1e-12)
    with jax.enable_x64(False):
        huge32, labels32 = jnp.asarray(np.asarray(huge), jnp.float32), jnp.array([0, 0, 1])
        value32 = losses.softmax_cross_entropy(huge32, labels32)
        grad = jax.grad(losses.softmax_cross_entropy)(huge32, labels32)
    assert float(value32) == pytest.approx((2e4 + np.log(2)) / 3, rel=1e-6)
    assert bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(np.asarray(grad[1]), [-1 / 3, 1 / 3, 0.0], atol=1e-7)


def test_binary_cross_entropy_is_stable_and_matches_the_formula():
    z = np.array([-800.0, -2.0, 0.0, 3.0, 800.0, 0.7])
    y = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.25])
    expected = np.mean([800.0, np.log1p(np.exp(-2.0)), np.log(2.0), np.log1p(np.exp(-3.0)), 800.0,
                        -0.25 * np.log(1 / (1 + np.exp(-0.7)))
                        - 0.75 * np.log(1 - 1 / (1 + np.exp(-0.7)))])
    assert float(losses.binary_cross_entropy(z, y)) == pytest.approx(expected, rel=1e-12)
    grad = jax.grad(losses.binary_cross_entropy)(jnp.asarray(z), jnp.asarray(y))
    sigmoid = np.exp(-np.logaddexp(0.0, -z))  # 1 / (1 + e^{−z}) without overflow
    np.testing.assert_allclose(np.asarray(grad), (sigmoid - y) / 6, atol=1e-15)


def test_mse_penalties_and_accuracy():
    assert float(losses.mse(jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]))) == 2.0
    assert float(losses.mse(jnp.ones((2, 3)), jnp.zeros((2, 3)))) == 1.0  # mean over elements
    params = {"dense": {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([5.0, 5.0])},
              "conv": {"w": jnp.full((2, 2, 1, 1), -0.5), "b": jnp.array([1.0])}}
    assert float(losses.l2_penalty(params)) == 1 + 4 + 4 * 0.25  # Σ w²; biases not penalized
    assert float(losses.l1_penalty(params)) == 1 + 2 + 4 * 0.5
    everything = lambda p: jax.tree_util.tree_map(lambda _: True, p)
    assert float(losses.l2_penalty(params, mask=everything)) == 6 + 50 + 1
    only_dense = {"dense": {"w": True, "b": True}, "conv": {"w": False, "b": False}}
    assert float(losses.l1_penalty(params, mask=only_dense)) == 3 + 10
    grads = jax.grad(losses.l2_penalty)(params)
    np.testing.assert_array_equal(grads["dense"]["w"], 2 * params["dense"]["w"])
    np.testing.assert_array_equal(grads["dense"]["b"], 0)
    assert float(losses.l2_penalty({"b": jnp.ones(3)})) == 0.0
    w = jnp.array([[-2.0, 0.0, 3.0]])  # the L1 gradient is sign(w): 0 at w = 0
    np.testing.assert_array_equal(jax.grad(losses.l1_penalty)({"w": w})["w"], [[-1.0, 0.0, 1.0]])
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert float(losses.accuracy(logits, jnp.array([1, 0, 0]))) == pytest.approx(2 / 3)
    assert float(losses.accuracy(logits, jnp.eye(2)[jnp.array([1, 1, 1])])) == pytest.approx(2 / 3)


def test_losses_work_under_jit_with_traced_labels():
    z = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)))
    y = jnp.array([0, 2, 1, 1])
    assert float(jax.jit(losses.softmax_cross_entropy)(z, y)) == pytest.approx(
        reference_cross_entropy(z, y), rel=1e-12)


BAD = [
    (lambda: losses.softmax_cross_entropy(jnp.ones((3, 4)), jnp.array([0, 1])), ValueError,
     r"integer labels must have shape \(3,\).*got \(2,\)"),
    (lambda: losses.softmax_cross_entropy(jnp.ones((2, 4)), jnp.array([0, 4])), ValueError,
     r"labels must be class indices in \[0, 4\).*got 4 at labels\[1\]"),
    (lambda: losses.softmax_cross_entropy(jnp.ones((2, 4)), jnp.ones((2, 3))), ValueError,
     r"one-hot \(or probability\) labels must have the logits' shape \(2, 4\); got \(2, 3\)"),
    (lambda: losses.softmax_cross_entropy(jnp.array([1, 2]), jnp.array(0)), TypeError,
     "logits must be floating point"),
    (lambda: losses.softmax_cross_entropy(jnp.array(1.0), jnp.array(0)), ValueError,
     "need a class axis"),
    (lambda: losses.binary_cross_entropy(jnp.ones(3), jnp.ones(4)), ValueError,
     r"labels must have the logits' shape \(3,\); got \(4,\)"),
    (lambda: losses.mse(jnp.ones(3), jnp.ones((3, 1))), ValueError,
     r"predictions \(3,\) and targets \(3, 1\) must have the same shape"),
    (lambda: losses.l2_penalty({"w": jnp.ones((2, 2))}, mask={"v": True}), ValueError,
     "mask must have the structure of params"),
    (lambda: losses.l1_penalty({"w": jnp.ones((2, 2))}, mask={"w": jnp.array(True)}), TypeError,
     r"mask leaves must be Python bools.*\['w'\]"),
    (lambda: losses.accuracy(jnp.ones((2, 3)), jnp.array([0, 1, 2])), ValueError,
     r"integer labels must have shape \(2,\)"),
]


@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_input(index):
    make, error, message = BAD[index]
    with pytest.raises(error, match=message):
        make()
