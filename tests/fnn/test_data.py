"""fnn.data: preprocessing against float64 NumPy references, batching, splitting, loaders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import data


@pytest.fixture
def correlated():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(6, 6))
    x = rng.normal(size=(500, 6)) @ mixing + rng.normal(size=6) * 5
    return x[:400], x[400:]


def test_standardize_uses_training_statistics(correlated):
    train, val = correlated
    prep = data.standardize(train)
    out = np.asarray(prep(train))
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(0), 1, rtol=1e-12)
    expected_val = (val - train.mean(0)) / train.std(0)
    np.testing.assert_allclose(np.asarray(prep(val)), expected_val, rtol=1e-12, atol=1e-12)
    # the validation data's own statistics were not used
    assert np.abs(np.asarray(prep(val)).mean(0)).max() > 1e-3


def test_standardize_leaves_constant_features_centered():
    x = np.stack([np.arange(10.0), np.full(10, 3.0)], 1)
    out = np.asarray(data.standardize(x)(x))
    np.testing.assert_allclose(out[:, 1], 0)
    assert np.all(np.isfinite(out))


def test_center(correlated):
    train, val = correlated
    prep = data.center(train)
    np.testing.assert_allclose(np.asarray(prep(val)), val - train.mean(0), rtol=1e-12, atol=1e-12)


def test_whitening_gives_identity_covariance(correlated):
    train, val = correlated
    for whiten in (data.pca_whiten, data.zca_whiten):
        out = np.asarray(whiten(train)(train))
        cov = out.T @ out / len(out)
        np.testing.assert_allclose(cov, np.eye(6), atol=1e-6)
        np.testing.assert_allclose(out.mean(0), 0, atol=1e-10)


def test_zca_is_the_inverse_square_root_of_the_covariance(correlated):
    train, val = correlated
    centered = train - train.mean(0)
    cov = centered.T @ centered / len(train)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    inverse_root = eigenvectors @ np.diag(eigenvalues**-0.5) @ eigenvectors.T
    expected = (val - train.mean(0)) @ inverse_root
    np.testing.assert_allclose(np.asarray(data.zca_whiten(train, eps=0.0)(val)), expected,
                               rtol=1e-9, atol=1e-9)


def test_pca_whitening_projects_on_principal_axes(correlated):
    train, _ = correlated
    centered = train - train.mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(centered.T @ centered / len(train))
    out = np.asarray(data.pca_whiten(train)(train))
    # each output column is ± a principal component scaled to unit variance
    for j in range(6):
        target = centered @ eigenvectors[:, j] / np.sqrt(eigenvalues[j])
        column = np.argmax([abs(np.dot(out[:, k], target)) for k in range(6)])
        np.testing.assert_allclose(np.abs(out[:, column]), np.abs(target), rtol=1e-8, atol=1e-8)


def test_whitening_does_not_blow_up_zero_variance_directions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 3))
    x = np.concatenate([x, x[:, :1] * 2.0], 1)  # rank 3 in 4 dimensions
    out = np.asarray(data.zca_whiten(x, eps=1e-6)(x))
    assert np.all(np.isfinite(out)) and np.abs(out).max() < 100


def test_batches_cover_every_example_once_and_follow_the_key():
    x = np.arange(103)
    y = np.arange(103) * 10
    key = jax.random.key(0)
    seen = [b for b in data.batches(key, (x, y), 10)]
    assert [len(b[0]) for b in seen] == [10] * 10 + [3]
    order = np.concatenate([b[0] for b in seen])
    assert sorted(order.tolist()) == list(range(103))
    assert not np.array_equal(order, np.arange(103))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in seen]), order * 10)
    again = np.concatenate([b[0] for b in data.batches(key, (x, y), 10)])
    np.testing.assert_array_equal(order, again)
    other = np.concatenate([b[0] for b in data.batches(jax.random.key(1), (x, y), 10)])
    assert not np.array_equal(order, other)
    dropped = list(data.batches(key, x, 10, drop_remainder=True))
    assert len(dropped) == 10 and all(len(b) == 10 for b in dropped)
    unshuffled = np.concatenate(list(data.batches(None, x, 10, shuffle=False)))
    np.testing.assert_array_equal(unshuffled, x)


def test_train_val_split_is_a_partition():
    x = np.arange(50)
    train, val = data.train_val_split(jax.random.key(3), {"x": x, "y": -x}, 0.2)
    assert len(val["x"]) == 10 and len(train["x"]) == 40
    assert sorted(np.concatenate([train["x"], val["x"]]).tolist()) == list(range(50))
    np.testing.assert_array_equal(train["y"], -train["x"])


def test_load_digits():
    x, y = data.load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32 and y.dtype == np.int32
    assert 0 <= x.min() and x.max() <= 1 and set(np.unique(y)) == set(range(10))


BAD = [
    (lambda: list(data.batches(jax.random.key(0), (np.ones(5), np.ones(6)), 2)), ValueError,
     "same leading"),
    (lambda: list(data.batches(0, np.ones(5), 2)), TypeError, r"jax.random.key\(0\)"),
    (lambda: list(data.batches(None, np.ones(5), 2)), TypeError, "PRNG key is required"),
    (lambda: list(data.batches(jax.random.key(0), np.ones(5), 0)), ValueError, "batch_size"),
    (lambda: data.train_val_split(jax.random.key(0), np.ones(5), 1.5), ValueError, "val_fraction"),
    (lambda: data.standardize(np.ones(5)), ValueError, "examples >= 2, features"),
    (lambda: data.standardize(np.ones((5, 3)))(np.ones((2, 4))), ValueError,
     "fitted on 3 features"),
    (lambda: data.pca_whiten(np.ones((5, 3)), eps=-1.0), ValueError, "eps"),
]


@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_input(index):
    make, error, message = BAD[index]
    with pytest.raises(error, match=message):
        make()


def test_preprocessing_in_default_32_bit_mode():
    with jax.enable_x64(False):
        x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
        out = data.zca_whiten(x)(x)
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(np.cov(np.asarray(out, np.float64).T, bias=True), np.eye(4),
                                   atol=1e-3)


# ------------------------------------------------------------------ issue 11 regressions


@pytest.mark.parametrize("whiten", [data.pca_whiten, data.zca_whiten])
def test_whitening_floors_zero_variance_directions_at_eps(whiten):
    """A constant feature (digits has constant pixels) is scaled by 1/√ε, not divided by zero.

    Reference: float64 NumPy eigendecomposition with the floor written from the formula
    x ← (x − μ) U diag(1/√max(λ, ε)) [Uᵀ for ZCA], applied to data in which the constant
    feature moves.
    """
    rng = np.random.default_rng(2)
    train = np.concatenate([rng.normal(size=(60, 3)) @ rng.normal(size=(3, 3)),
                            np.full((60, 1), 0.25)], 1)
    test = train[:5] + np.array([0.0, 0.0, 0.0, 1.0])
    eps = 1e-4
    mean = train.mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh((train - mean).T @ (train - mean) / len(train))
    scale = np.diag(1 / np.sqrt(np.maximum(eigenvalues, eps)))
    expected = (test - mean) @ eigenvectors @ scale
    out = np.asarray(whiten(train, eps=eps)(test))
    if whiten is data.zca_whiten:
        np.testing.assert_allclose(out, expected @ eigenvectors.T, rtol=1e-8, atol=1e-8)
    else:  # principal axes are defined up to sign (and order): compare |columns| as sets
        np.testing.assert_allclose(np.sort(np.abs(out), 1), np.sort(np.abs(expected), 1),
                                   rtol=1e-8, atol=1e-8)
    assert np.abs(out).max() == pytest.approx(1 / np.sqrt(eps), rel=1e-6)


@pytest.mark.parametrize("n", [1, 5, 6, 10, 11, 16, 21])
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_batch_indices_cover_every_example_whatever_the_remainder(n, drop_remainder):
    size = 5
    index = data.batch_indices(jax.random.key(0), n, size, drop_remainder=drop_remainder)
    sizes = [len(i) for i in index]
    if drop_remainder:
        assert sizes == [size] * (n // size)
    else:
        assert sizes == [size] * (n // size) + ([n % size] if n % size else [])
        assert sorted(np.concatenate(index).tolist()) == list(range(n))


def test_standardize_rejects_non_finite_training_data_and_locates_it():
    x = np.random.default_rng(0).normal(size=(30, 6))
    x[17, 4] = np.nan
    x[21, 0] = np.inf
    x[25, 2] = np.nan
    message = (r"x_train has 3 non-finite values \(NaN: 2, Inf: 1\); first at row 17, "
               "column 4")
    for fit_preprocessor in (data.center, data.standardize, data.pca_whiten, data.zca_whiten):
        with pytest.raises(ValueError, match=message):
            fit_preprocessor(x)


def test_missing_scikit_learn_names_the_package(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "sklearn.datasets", None)
    with pytest.raises(ImportError) as caught:
        data.load_iris()
    message = str(caught.value)
    assert "pip install scikit-learn" in message and "fnn[examples]" in message
    assert "-e" not in message.split()


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_whitening_in_low_precision_keeps_the_dtype(dtype):
    """float16/bfloat16 data (no SVD in those dtypes) are whitened; the result keeps the dtype.

    Reference: identity covariance of the whitened data, up to the dtype's rounding.
    """
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3)) @ np.array([[2.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.5]])
    low = jnp.asarray(x, dtype)
    for whiten in (data.pca_whiten, data.zca_whiten):
        out = whiten(low)(low)
        assert out.dtype == dtype
        cov = np.cov(np.asarray(out, np.float64).T, bias=True)
        np.testing.assert_allclose(cov, np.eye(3), atol=0.05)
    pixels = data.zca_whiten(x)(np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert jnp.issubdtype(pixels.dtype, jnp.floating)
