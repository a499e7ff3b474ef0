"""Every value check in fnn.losses, fnn.activations and fnn.layers is safe inside a trace.

A constant captured by a jitted function is concrete (checked with NumPy where the
user called us), but any jnp operation on it inside the trace is traced: the checks
must never call jnp on it. Each check runs here under jax.jit, jax.vmap and jax.grad
with captured constants; a value that is itself traced is not checked, and a bad
one must then make the result NaN, never a plausible finite number.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import losses

KEY = jax.random.key(0)
Z = np.random.default_rng(0).normal(size=(4, 3))


def reference_cross_entropy(z, y):
    z = np.asarray(z, np.float64)
    log_p = z - z.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean()


def reference_bce(z, y):
    return np.mean(np.logaddexp(0.0, z) - z * y)


# ------------------------------------------------------------------ labels (issue items 5, 11)

Y = np.array([0, 1, 2, 1])
PROBS = np.eye(3)[Y] * 0.8 + 0.2 / 3  # label smoothing: rows sum to 1
BITS = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 1.0], [0.25, 0.0, 1.0], [1.0, 1.0, 0.0]])

LABEL_LOSSES = {  # name: (fn of (logits, labels), captured labels, float64 reference)
    "softmax_cross_entropy": (losses.softmax_cross_entropy, Y,
                              lambda z: reference_cross_entropy(z, Y)),
    "softmax_cross_entropy (probabilities)": (
        losses.softmax_cross_entropy, PROBS,
        lambda z: -np.mean(np.sum(PROBS * (z - z.max(1, keepdims=True) - np.log(np.exp(
            z - z.max(1, keepdims=True)).sum(1, keepdims=True))), 1))),
    "binary_cross_entropy": (losses.binary_cross_entropy, BITS, lambda z: reference_bce(z, BITS)),
    "accuracy": (losses.accuracy, Y, lambda z: np.mean(np.argmax(z, 1) == Y)),
}


@pytest.mark.parametrize("name", list(LABEL_LOSSES))
def test_captured_labels_work_under_jit_vmap_and_grad(name):
    fn, labels, reference = LABEL_LOSSES[name]
    captured = jnp.asarray(labels)  # the notebook way: a jnp constant closed over
    loss = lambda z: fn(z, captured)
    z = jnp.asarray(Z)
    assert float(jax.jit(loss)(z)) == pytest.approx(reference(Z), rel=1e-12)
    batch = jnp.stack([z, 2 * z])
    np.testing.assert_allclose(np.asarray(jax.vmap(loss)(batch)),
                               [reference(Z), reference(2 * Z)], rtol=1e-12)
    if name != "accuracy":  # accuracy is piecewise constant
        grad = jax.grad(loss)(z)
        numeric = np.zeros_like(Z)
        for index in np.ndindex(Z.shape):  # central differences of the float64 reference
            step = np.zeros_like(Z)
            step[index] = 1e-6
            numeric[index] = (reference(Z + step) - reference(Z - step)) / 2e-6
        np.testing.assert_allclose(np.asarray(grad), numeric, rtol=1e-5, atol=1e-9)
        assert np.all(np.isfinite(np.asarray(jax.jit(jax.grad(loss))(z))))


BAD_LABELS = {  # name: (fn, bad captured labels, the error)
    "softmax_cross_entropy -1": (losses.softmax_cross_entropy, np.array([0, -1, 2, 1]),
                                 r"labels must be class indices in \[0, 3\).*got -1 at labels\[1\]"),
    "softmax_cross_entropy 3": (losses.softmax_cross_entropy, np.array([0, 1, 2, 3]),
                                r"in \[0, 3\).*got 3 at labels\[3\]"),
    "softmax_cross_entropy sum 2": (losses.softmax_cross_entropy, np.eye(3)[Y] * 2.0,
                                    r"labels must be >= 0 and sum to 1.*labels\[0\] sums to 2"),
    "binary_cross_entropy 2": (losses.binary_cross_entropy, BITS + 1.0,
                               r"labels must be in \[0, 1\]; got 2.0 at labels\[0, 0\]"),
    "binary_cross_entropy -0.5": (losses.binary_cross_entropy, BITS - 0.5,
                                  r"labels must be in \[0, 1\]; got -0.5 at labels\[0, 1\]"),
    "accuracy -1": (losses.accuracy, np.array([0, 1, -1, 1]), r"got -1 at labels\[2\]"),
}


@pytest.mark.parametrize("name", list(BAD_LABELS))
def test_bad_captured_labels_raise_under_jit_vmap_and_grad(name):
    fn, labels, message = BAD_LABELS[name]
    captured = jnp.asarray(labels)
    loss = lambda z: fn(z, captured)
    z = jnp.asarray(Z)
    for transform in (jax.jit, jax.grad, lambda f: jax.vmap(f, in_axes=None, axis_size=2)):
        if name.startswith("accuracy") and transform is jax.grad:
            continue
        with pytest.raises(ValueError, match=message):
            transform(loss)(z)
    with pytest.raises(ValueError, match=message):  # and eagerly
        loss(z)


@pytest.mark.parametrize("name", list(BAD_LABELS))
def test_bad_traced_labels_give_nan_never_a_finite_loss(name):
    fn, labels, _ = BAD_LABELS[name]
    z = jnp.asarray(Z)
    assert np.isnan(float(jax.jit(fn)(z, jnp.asarray(labels))))
    good = LABEL_LOSSES[name.split(" ")[0]][1] if not name.startswith("softmax_cross_entropy sum") \
        else PROBS
    # vmapped over a batch of label sets: only the bad member is NaN
    both = jax.vmap(fn, in_axes=(None, 0))(z, jnp.stack([jnp.asarray(good, jnp.asarray(labels).dtype),
                                                         jnp.asarray(labels)]))
    assert np.isfinite(float(both[0])) and np.isnan(float(both[1]))
    if not name.startswith("accuracy"):
        value, grad = jax.jit(jax.value_and_grad(fn))(z, jnp.asarray(labels))
        assert np.isnan(float(value))


def test_a_minus_one_label_is_not_read_as_the_last_class_under_jit():
    # the case: -1 wrapped around to the last class and gave a finite loss
    z = jnp.asarray(Z)
    value = jax.jit(losses.softmax_cross_entropy)(z, jnp.array([0, 1, 2, -1]))
    assert np.isnan(float(value))
    with_last = reference_cross_entropy(Z, np.array([0, 1, 2, 2]))
    assert np.isfinite(with_last)  # what the old code returned


# ------------------------------------------------------------------ hyperparameters


def _dropout(rate):
    return fnn.Dropout(rate).apply({}, {}, jnp.ones((2, 50)), key=KEY, train=True)[0]


HYPERPARAMETERS = {  # name: (build-and-apply fn of the value, a valid value, a bad value)
    "Dropout rate": (_dropout, 0.25, 1.5),
    "LeakyRelu negative_slope": (
        lambda a: fnn.LeakyRelu(a).apply({}, {}, jnp.asarray([[-2.0, 3.0]]))[0], 0.1, jnp.inf),
    "Elu alpha": (lambda a: fnn.Elu(a).apply({}, {}, jnp.asarray([[-2.0, 3.0]]))[0], 0.5,
                  jnp.nan),
    "BatchNorm decay": (
        lambda d: fnn.BatchNorm(decay=d).apply(*fnn.BatchNorm().init(KEY, (-1, 2), jnp.float64)[1:],
                                               jnp.asarray([[1.0, 2.0], [3.0, 5.0]]), train=True)[1]["mean"],
        0.5, 1.5),
    "BatchNorm eps": (
        lambda e: fnn.BatchNorm(eps=e).apply(*fnn.BatchNorm().init(KEY, (-1, 2), jnp.float64)[1:],
                                             jnp.asarray([[1.0, 2.0], [3.0, 5.0]]), train=True)[0],
        1e-3, -1e-3),
    "LayerNorm eps": (
        lambda e: fnn.LayerNorm(eps=e).apply(fnn.LayerNorm().init(KEY, (-1, 2), jnp.float64)[1],
                                             {}, jnp.asarray([[1.0, 2.0], [3.0, 5.0]]))[0],
        1e-3, 0.0),
    "RMSNorm eps": (
        lambda e: fnn.RMSNorm(eps=e).apply(fnn.RMSNorm().init(KEY, (-1, 2), jnp.float64)[1],
                                           {}, jnp.asarray([[1.0, 2.0], [3.0, 5.0]]))[0],
        1e-3, -1.0),
    "GroupNorm eps": (
        lambda e: fnn.GroupNorm(1, eps=e).apply(fnn.GroupNorm(1).init(KEY, (-1, 2), jnp.float64)[1],
                                                {}, jnp.asarray([[1.0, 2.0], [3.0, 5.0]]))[0],
        1e-3, 0.0),
}
REFERENCES = {
    "LeakyRelu negative_slope": np.array([[-0.2, 3.0]]),
    "Elu alpha": np.array([[0.5 * np.expm1(-2.0), 3.0]]),
    "BatchNorm decay": np.array([1.0, 1.75]),  # 0.5·0 + 0.5·(2, 3.5)
    "BatchNorm eps": np.array([[-1.0, -1.0], [1.0, 1.0]]) / np.sqrt(np.array([1.0, 2.25]) + 1e-3)
    * np.array([1.0, 1.5]),
    "LayerNorm eps": np.array([[-0.5, 0.5], [-1.0, 1.0]]) / np.sqrt(np.array([[0.25], [1.0]]) + 1e-3),
    "RMSNorm eps": np.array([[1.0, 2.0], [3.0, 5.0]]) / np.sqrt(np.array([[2.5], [17.0]]) + 1e-3),
    "GroupNorm eps": np.array([[-0.5, 0.5], [-1.0, 1.0]]) / np.sqrt(np.array([[0.25], [1.0]]) + 1e-3),
}


@pytest.mark.parametrize("name", list(HYPERPARAMETERS))
def test_hyperparameters_as_captured_jnp_scalars_work_under_jit_vmap_and_grad(name):
    build, good, _ = HYPERPARAMETERS[name]
    captured = jnp.asarray(good)
    eager = np.asarray(build(good))
    if name in REFERENCES:
        np.testing.assert_allclose(eager, REFERENCES[name], rtol=1e-6)
    else:  # Dropout: the kept units are scaled by 1 / (1 - rate)
        assert set(np.unique(eager)) <= {0.0, 1 / 0.75}
    f = lambda x: jnp.sum(build(captured) * x)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda: build(captured))()), eager, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.vmap(lambda x: build(captured) * x)(jnp.ones(2)))[0],
                               eager, rtol=1e-6)
    np.testing.assert_allclose(float(jax.grad(f)(1.0)), eager.sum(), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", list(HYPERPARAMETERS))
def test_bad_concrete_hyperparameters_raise_even_when_captured_under_jit(name):
    build, _, bad = HYPERPARAMETERS[name]
    argument = name.split(" ")[1]
    with pytest.raises(ValueError, match=argument):
        build(bad)
    captured = jnp.asarray(bad)
    with pytest.raises(ValueError, match=argument):
        jax.jit(lambda: build(captured))()
    with pytest.raises(ValueError, match=argument):
        jax.vmap(lambda x: build(captured) * x)(jnp.ones(2))


@pytest.mark.parametrize("name", list(HYPERPARAMETERS))
def test_traced_hyperparameters_are_used_and_bad_ones_give_nan(name):
    build, good, bad = HYPERPARAMETERS[name]
    eager = np.asarray(build(good))
    np.testing.assert_allclose(np.asarray(jax.jit(build)(good)), eager, rtol=1e-6)
    batched = np.asarray(jax.vmap(build)(jnp.asarray([good, bad])))
    np.testing.assert_allclose(batched[0], eager, rtol=1e-6)
    if name in ("LeakyRelu negative_slope", "Elu alpha"):
        # any finite slope/alpha is valid; a non-finite one shows on the negative inputs
        assert not np.all(np.isfinite(batched[1]))
    else:
        assert np.all(np.isnan(batched[1]))


# ------------------------------------------------------------------ shape checks and keys


def test_batchnorm_batch_of_one_check_under_jit_vmap_and_grad():
    layer = fnn.BatchNorm()
    _, params, state = layer.init(KEY, (-1, 3), jnp.float64)
    one = jnp.ones((1, 3))
    message = r"batch of 1 example.*drop_remainder=True.*train=False"
    with pytest.raises(ValueError, match=message):
        jax.jit(lambda x: layer.apply(params, state, x, train=True))(one)
    with pytest.raises(ValueError, match=message):
        jax.grad(lambda x: jnp.sum(layer.apply(params, state, x, train=True)[0]))(one)
    with pytest.raises(ValueError, match="BatchNorm: training needs more than one value"):
        jax.vmap(lambda x: layer.apply(params, state, x, train=True)[0])(jnp.ones((4, 3)))
    # evaluation on one example works, under every transform
    y = jax.jit(lambda x: layer.apply(params, state, x)[0])(one)
    np.testing.assert_allclose(np.asarray(y), 1 / np.sqrt(1 + 1e-5), rtol=1e-12)
    per_example = jax.vmap(lambda x: layer.apply(params, state, x)[0])(jnp.ones((4, 3)))
    np.testing.assert_allclose(np.asarray(per_example), 1 / np.sqrt(1 + 1e-5), rtol=1e-12)
    grad = jax.grad(lambda x: jnp.sum(layer.apply(params, state, x)[0]))(one)
    np.testing.assert_allclose(np.asarray(grad), 1 / np.sqrt(1 + 1e-5), rtol=1e-12)
    two = jax.jit(lambda x: layer.apply(params, state, x, train=True)[0])(jnp.asarray(
        [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    np.testing.assert_allclose(np.asarray(two[:, 0]), [-1 / np.sqrt(1 + 1e-5), 1 / np.sqrt(1 + 1e-5)],
                               rtol=1e-12)


def test_weightnorm_zero_weight_check_is_skipped_when_traced_and_apply_is_traceable():
    import init
    zero = fnn.WeightNorm(fnn.Dense(3, w_init=init.zeros()))
    with pytest.raises(ValueError, match=r"initial weight w has all zeros for output unit 0"):
        zero.init(KEY, (-1, 2))
    jax.eval_shape(lambda k: zero.init(k, (-1, 2)), KEY)  # traced init: no value check
    layer = fnn.WeightNorm(fnn.Dense(3))
    _, params, _ = layer.init(KEY, (-1, 2), jnp.float64)
    x = jnp.asarray([[1.0, -2.0]])
    w = np.asarray(params["v"]) * np.asarray(params["g"]) / np.linalg.norm(params["v"], axis=0)
    expected = np.asarray(x) @ w + np.asarray(params["b"])
    np.testing.assert_allclose(np.asarray(jax.jit(lambda x: layer.apply(params, {}, x)[0])(x)),
                               expected, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.vmap(lambda x: layer.apply(params, {}, x)[0])(x)),
                               expected, rtol=1e-12)
    grad = jax.grad(lambda x: jnp.sum(layer.apply(params, {}, x)[0]))(x)
    np.testing.assert_allclose(np.asarray(grad), w.sum(1)[None], rtol=1e-12)


def test_keys_are_checked_but_traced_and_vmapped_keys_pass():
    model = fnn.serial(fnn.Dense(4), fnn.Dropout(0.5))
    _, params, state = model.init(KEY, (-1, 3))
    x = jnp.ones((2, 3))
    run = lambda k: model.apply(params, state, x, key=k, train=True)[0]
    eager = np.asarray(run(KEY))
    np.testing.assert_allclose(np.asarray(jax.jit(run)(KEY)), eager, rtol=1e-6)
    keys = jax.random.split(KEY, 3)
    batched = np.asarray(jax.vmap(run)(keys))
    np.testing.assert_allclose(batched[0], np.asarray(run(keys[0])), rtol=1e-6)
    legacy = jax.random.PRNGKey(0)  # the uint32[2] keys work too
    assert run(legacy).shape == (2, 4)
    _, p2, _ = jax.jit(lambda k: model.init(k, (-1, 3)))(KEY)
    np.testing.assert_allclose(np.asarray(p2["dense_0"]["w"]), np.asarray(params["dense_0"]["w"]))
    with pytest.raises(TypeError, match=r"serial.apply: key must be a JAX PRNG key.*got the int 0"):
        jax.jit(lambda x: model.apply(params, state, x, key=0, train=True))(x)


def test_empty_outputs_raise_under_jit():
    conv = fnn.Conv2D(2, 5, padding="VALID")
    _, params, _ = conv.init(KEY, (-1, 8, 8, 1))
    small = jnp.ones((1, 3, 3, 1))
    with pytest.raises(ValueError, match=r"Conv2D\(2, 5\): input shape \(1, 3, 3, 1\) gives an "
                                         r"empty output"):
        jax.jit(lambda x: conv.apply(params, {}, x)[0])(small)
    with pytest.raises(ValueError, match=r"MaxPool2D\(\(4, 4\)\): input shape \(1, 3, 3, 1\)"):
        jax.vmap(lambda x: fnn.MaxPool2D(4).apply({}, {}, x)[0])(small[None])


# ------------------------------------------------------------------ Embedding ids


def _embedding():
    layer = fnn.Embedding(6, 3)
    _, params, _ = layer.init(KEY, (-1, 2), jnp.float64)
    return layer, params


def test_embedding_with_captured_ids_works_under_jit_vmap_and_grad():
    layer, params = _embedding()
    ids = np.array([[0, 5], [2, 2]])
    captured = jnp.asarray(ids)
    table = np.asarray(params["embedding"])
    f = lambda p: jnp.sum(jnp.sin(layer.apply(p, {}, captured)[0]))
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda p: layer.apply(p, {}, captured)[0])(
        params)), table[ids])
    batched = jax.vmap(lambda s: layer.apply({"embedding": s * params["embedding"]}, {},
                                             captured)[0])(jnp.asarray([1.0, 2.0]))
    np.testing.assert_allclose(np.asarray(batched[1]), 2 * table[ids], rtol=1e-15)
    # d/dE Σ sin(E[ids]): cos(E[i]) summed over the places id i was looked up; 0 for others
    expected = np.zeros_like(table)
    np.add.at(expected, ids.ravel(), np.cos(table[ids.ravel()]))
    np.testing.assert_allclose(np.asarray(jax.grad(f)(params)["embedding"]), expected,
                               rtol=1e-12)


@pytest.mark.parametrize("bad, where", [(6, r"got 6 at x\[1, 0\]"), (-1, r"got -1 at x\[1, 0\]")])
def test_bad_captured_ids_raise_under_jit_vmap_and_grad(bad, where):
    layer, params = _embedding()
    captured = jnp.asarray([[0, 1], [bad, 2]])
    apply = lambda p: layer.apply(p, {}, captured)[0]
    message = r"Embedding\(6, 3\): ids must be in \[0, 6\); " + where
    for transform in (jax.jit, jax.grad, lambda f: jax.vmap(f, in_axes=None, axis_size=2)):
        with pytest.raises(ValueError, match=message):
            transform(lambda p: jnp.sum(apply(p)))(params)
    with pytest.raises(ValueError, match=message):
        apply(params)


@pytest.mark.parametrize("bad", [6, -1, 100])
def test_bad_traced_ids_give_nan_rows_never_another_row(bad):
    """A traced id out of range cannot be checked: its vector is NaN (-1 does not wrap around
    to the last row, 6 is not clamped to row 5); the other ids' vectors are exact."""
    layer, params = _embedding()
    table = np.asarray(params["embedding"])
    y = np.asarray(jax.jit(lambda i: layer.apply(params, {}, i)[0])(jnp.asarray([[3, bad]])))
    np.testing.assert_array_equal(y[0, 0], table[3])
    assert np.all(np.isnan(y[0, 1]))
    rows = np.asarray(jax.vmap(lambda i: layer.apply(params, {}, i)[0])(jnp.asarray([[1], [bad]])))
    np.testing.assert_array_equal(rows[0, 0], table[1])
    assert np.all(np.isnan(rows[1, 0]))
    grad = jax.jit(jax.grad(lambda p, i: jnp.sum(layer.apply(p, {}, i)[0][0, 0])))(
        params, jnp.asarray([[3, bad]]))
    expected = np.zeros_like(table)
    expected[3] = 1.0  # the valid row's gradient is exact and finite
    np.testing.assert_array_equal(np.asarray(grad["embedding"]), expected)
