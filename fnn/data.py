"""Data: real data sets, train/validation splits, mini-batches and preprocessing.

Data sets (each loader returns ``(x, y)``, x float32 rows, y int32 labels;
``DATASETS`` maps names to loaders): :func:`load_digits` and :func:`load_iris`
ship with scikit-learn; :func:`load_mnist` and :func:`load_fashion_mnist`
download the standard IDX files once, verify their SHA-256 and cache them in
``$FNN_DATA_DIR`` (default ``~/.cache/fnn/datasets``)::

    x, y = fnn.data.load_digits()                 # (1797, 64), offline
    x, y = fnn.data.load_mnist()                  # (60000, 784), downloaded on first use

Preprocessing is *fitted* on training data and then applied unchanged to
validation and test data, so no statistic leaks from them::

    x_train, x_val = ...
    prep = fnn.data.standardize(x_train)      # statistics of x_train only
    x_train, x_val = prep(x_train), prep(x_val)

Fitting rejects training data with NaN or Inf, with a message that counts and
locates them (a single NaN would otherwise turn a whole column of the
statistics, and so of every transformed data set, into NaN). Mini-batches are
drawn by a PRNG key: the same key gives the same order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from init._checks import check_key as _check_key  # the one PRNG-key check (layers, init)

from ._datasets import (
    DATASETS,
    DownloadError,
    load_digits,
    load_fashion_mnist,
    load_iris,
    load_mnist,
)

Data = Any  # an array, or a tuple/dict (pytree) of arrays sharing their first axis


# ------------------------------------------------------------------ checks


def _num_examples(owner: str, data: Data, name: str = "data") -> int:
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError(f"{owner}: {name} holds no arrays.")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [np.shape(x) for x in leaves]
        raise ValueError(
            f"{owner}: every array in {name} must have the same leading (example) axis; got "
            f"shapes {shapes}."
        )
    return sizes.pop()


def _check_int(owner: str, name: str, value: Any, low: int) -> int:
    """``value`` as an int, or a clear error unless it is an int (not bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner}: {name} must be an int >= {low}; got {type(value).__name__} "
                        f"{value!r}.")
    if value < low:
        raise ValueError(f"{owner}: {name} must be an int >= {low}; got {value!r}.")
    return int(value)


def _check_number(owner: str, name: str, value: Any) -> float:
    """``value`` as a float, or TypeError unless it is a real number (not bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {name} must be a real number; got {type(value).__name__} "
                        f"{value!r}.")
    return float(value)


def _location(index: tuple) -> str:
    if len(index) == 1:
        return f"row {index[0]}"
    if len(index) == 2:
        return f"row {index[0]}, column {index[1]}"
    return f"index {index}"


def _check_finite(owner: str, name: str, data: Data) -> None:
    """Raises ValueError naming, counting and locating non-finite values in concrete float arrays.

    Tracers are skipped (inside a trace the NaN propagates to the result, where it is visible);
    the check runs on the host with NumPy, never as a traced jnp operation.
    """
    for path, x in jax.tree_util.tree_leaves_with_path(data):
        if isinstance(x, jax.core.Tracer):
            continue
        array = np.asarray(x)
        if not jnp.issubdtype(array.dtype, jnp.inexact):
            continue
        bad = ~np.isfinite(array)
        if not bad.any():
            continue
        nan = int(np.isnan(array).sum())
        label = name + jax.tree_util.keystr(path)
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{owner}: {label} has {int(bad.sum())} non-finite values (NaN: {nan}, Inf: "
            f"{int(bad.sum()) - nan}); first at {_location(first)}. Remove or impute them first."
        )


def _take(data: Data, index: Any) -> Data:
    return jax.tree_util.tree_map(lambda x: x[index], data)


# ------------------------------------------------------------------ splitting and batching


def train_val_split(key: jax.Array, data: Data, val_fraction: float = 0.2) -> tuple[Data, Data]:
    """Shuffles the examples with ``key`` and splits off a validation set.

    Args:
      key: a PRNG key (the same key gives the same split).
      data: an array or a pytree of arrays with a shared first axis.
      val_fraction: the fraction in (0, 1) of examples that go to validation
        (rounded to the nearest count, at least 1).

    Returns:
      ``(train, val)`` with the structure of ``data``.

    Example:
        >>> (x_tr, y_tr), (x_val, y_val) = train_val_split(jax.random.key(0), (x, y), 0.2)
    """
    _check_key("train_val_split", key)
    n = _num_examples("train_val_split", data)
    fraction = _check_number("train_val_split", "val_fraction", val_fraction)
    if not 0 < fraction < 1:
        raise ValueError(f"train_val_split: val_fraction must be in (0, 1); got {val_fraction!r}.")
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise ValueError(f"train_val_split: {n} examples are too few to split off {n_val}.")
    order = np.asarray(jax.random.permutation(key, n))
    return _take(data, order[n_val:]), _take(data, order[:n_val])


def _indices(owner: str, key: Any, n: Any, batch_size: Any, shuffle: Any,
             drop_remainder: Any) -> list[np.ndarray]:
    n = _check_int(owner, "n", n, 0)
    batch_size = _check_int(owner, "batch_size", batch_size, 1)
    for name, flag in (("shuffle", shuffle), ("drop_remainder", drop_remainder)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{owner}: {name} must be True or False; got {flag!r}.")
    if shuffle:
        _check_key(owner, key)
        order = np.asarray(jax.random.permutation(key, n))
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_remainder else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def batch_indices(key: jax.Array | None, n: int, batch_size: int, *, shuffle: bool = True,
                  drop_remainder: bool = True) -> list[np.ndarray]:
    """The example indices of each mini-batch of one epoch.

    Every example appears exactly once per epoch (with ``drop_remainder=True``,
    the last ``n mod batch_size`` examples of the shuffled order are left out).
    The batches are cut as they fall: a last batch of one example stays one
    example (:func:`fnn.train.make_epoch` merges it into the batch before, for
    layers such as BatchNorm that cannot train on one example).

    Example:
        >>> batch_indices(jax.random.key(0), 10, 4, drop_remainder=False)  # sizes 4, 4, 2
    """
    return _indices("batch_indices", key, n, batch_size, shuffle, drop_remainder)


def batches(key: jax.Array | None, data: Data, batch_size: int, *, shuffle: bool = True,
            drop_remainder: bool = False) -> Iterator[Data]:
    """Yields the mini-batches of one epoch, in an order drawn from ``key``.

    Args:
      key: a PRNG key (required when ``shuffle``); the same key gives the same order.
      data: an array or a pytree of arrays with a shared first axis.
      batch_size: examples per batch.
      shuffle: shuffle the examples (otherwise keep their order).
      drop_remainder: leave out the last, smaller batch.

    Example:
        >>> for x, y in batches(jax.random.fold_in(key, epoch), (x_train, y_train), 64):
        ...     ...
    """
    n = _num_examples("batches", data)
    # checked here, not at the first next(): the error points at the call that was wrong
    indices = _indices("batches", key, n, batch_size, shuffle, drop_remainder)
    return (_take(data, index) for index in indices)


# ------------------------------------------------------------------ preprocessing


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessor:
    """A transform fitted on training data: call it on any data with the same features.

    ``stats`` holds what was learned from the training data (means, scales, bases).
    A preprocessor is a function of its input only, so ``jax.jit(prep)`` and
    ``jax.vmap(prep)`` work directly.
    """

    name: str
    stats: dict
    transform: Callable[[dict, jax.Array], jax.Array]

    def __call__(self, x: Any) -> jax.Array:
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):  # e.g. uint8 pixels: as _matrix does
            x = x.astype(jnp.result_type(float))
        features = self.stats["mean"].shape[-1]
        if x.ndim < 1 or x.shape[-1] != features:
            raise ValueError(
                f"{self.name}: fitted on {features} features; got data of shape {x.shape}."
            )
        return self.transform(self.stats, x)


def _matrix(owner: str, x: Any) -> jax.Array:
    """The training data as a float matrix, checked: shape (examples >= 2, features), finite."""
    _check_finite(owner, "x_train", x)  # concrete data only: fitted statistics must not be NaN
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(
            f"{owner}: expected training data of shape (examples >= 2, features); got {x.shape}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _check_eps(owner: str, eps: Any) -> float:
    value = _check_number(owner, "eps", eps)
    if not 0 <= value < np.inf:
        raise ValueError(f"{owner}: eps must be a finite number >= 0; got {eps!r}.")
    return value


def center(x_train: Any) -> Preprocessor:
    """Mean-centering: x ← x − μ, with μ the per-feature mean of the training data.

    Example:
        >>> prep = center(x_train); x_val = prep(x_val)
    """
    x = _matrix("center", x_train)
    return Preprocessor("center", {"mean": x.mean(0)}, lambda s, x: x - s["mean"])


def standardize(x_train: Any, eps: float = 1e-8) -> Preprocessor:
    """Standardization: x ← (x − μ) / σ per feature (σ the biased standard deviation).

    Features with σ ≤ ``eps`` (constant in the training data) are only centered.

    Example:
        >>> prep = standardize(x_train); x_train, x_val = prep(x_train), prep(x_val)
    """
    eps = _check_eps("standardize", eps)
    x = _matrix("standardize", x_train)
    std = x.std(0)
    scale = jnp.where(std > eps, std, 1.0)
    return Preprocessor("standardize", {"mean": x.mean(0), "scale": scale},
                        lambda s, x: (x - s["mean"]) / s["scale"])


def _eigen(owner: str, x_train: Any, eps: float):
    eps = _check_eps(owner, eps)
    x = _matrix(owner, x_train)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # no SVD in float16/bfloat16
    mean = x.mean(0)
    _, singular, vt = jnp.linalg.svd(x - mean, full_matrices=False)
    variance = singular**2 / x.shape[0]  # eigenvalues of the covariance Xᵀ X / n
    # directions with (near-)zero variance are not amplified: 1/√max(λ, ε)
    inverse_scale = jax.lax.rsqrt(jnp.maximum(variance, eps))
    return mean, vt.T, inverse_scale


def pca_whiten(x_train: Any, eps: float = 1e-5) -> Preprocessor:
    """PCA whitening: rotate onto the principal axes and scale each to unit variance.

    With covariance Σ = Xcᵀ Xc / n = U diag(λ) Uᵀ (from the SVD of the centered
    training data Xc): x ← (x − μ) U diag(1 / √max(λ, ε)). On the training data
    the result has identity covariance in every direction with λ > ε.

    Example:
        >>> prep = pca_whiten(x_train); x_val = prep(x_val)
    """
    mean, basis, inverse_scale = _eigen("pca_whiten", x_train, eps)
    stats = {"mean": mean, "basis": basis, "inverse_scale": inverse_scale}
    return Preprocessor("pca_whiten", stats,
                        lambda s, x: (((x - s["mean"]) @ s["basis"]) * s["inverse_scale"])
                        .astype(x.dtype))


def zca_whiten(x_train: Any, eps: float = 1e-5) -> Preprocessor:
    """ZCA whitening: PCA whitening rotated back to the original axes.

    x ← (x − μ) U diag(1 / √max(λ, ε)) Uᵀ: the whitened data closest to the input
    (images still look like images).

    Example:
        >>> prep = zca_whiten(x_train); x_val = prep(x_val)
    """
    mean, basis, inverse_scale = _eigen("zca_whiten", x_train, eps)
    return Preprocessor(
        "zca_whiten", {"mean": mean, "basis": basis, "inverse_scale": inverse_scale},
        lambda s, x: ((((x - s["mean"]) @ s["basis"]) * s["inverse_scale"]) @ s["basis"].T)
        .astype(x.dtype))


# ------------------------------------------------------------------ public names
# the data set loaders live in fnn/_datasets.py and are public here

__all__ = [
    "DATASETS", "DownloadError", "Preprocessor", "batch_indices", "batches", "center",
    "load_digits", "load_fashion_mnist", "load_iris", "load_mnist", "pca_whiten", "standardize",
    "train_val_split", "zca_whiten",
]
