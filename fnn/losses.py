"""Losses, penalties and metrics.

Each loss is a mean over the examples (every axis but the class axis for the
classification losses, every element for :func:`mse`), so its scale does not
depend on the batch size. Penalties are sums over the penalized leaves:

* ``softmax_cross_entropy``: −(1/N) Σₙ log softmax(zₙ)_{yₙ}
* ``binary_cross_entropy``: mean(−y log σ(z) − (1 − y) log(1 − σ(z)))
* ``mse``: mean((p − t)²)
* ``l2_penalty``: Σ w² (the source texts' "sum of the squares of the elements")
* ``l1_penalty``: Σ |w|
* ``accuracy``: the fraction of argmax(z) = y
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _float_logits(logits: Any, owner: str, class_axis: bool = True) -> jax.Array:
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"{owner}: logits must be floating point; got {logits.dtype}.")
    if class_axis and logits.ndim < 1:
        raise ValueError(f"{owner}: logits need a class axis (the last); got a scalar.")
    return logits


def _integer_labels(logits: jax.Array, labels: Any, owner: str) -> bool:
    """True for integer class labels, False for one-hot/probability labels; checks shapes."""
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != logits.shape[:-1]:
            raise ValueError(f"{owner}: integer labels must have shape {logits.shape[:-1]} "
                             f"(logits without the class axis); got {labels.shape}.")
        if not isinstance(labels, jax.core.Tracer) and labels.size:
            low, high = int(np.min(labels)), int(np.max(labels))
            if low < 0 or high >= logits.shape[-1]:
                raise ValueError(f"{owner}: integer labels must be in [0, {logits.shape[-1]}) "
                                 f"(the number of classes); got values in [{low}, {high}].")
        return True
    if labels.shape != logits.shape:
        raise ValueError(f"{owner}: one-hot (or probability) labels must have the logits' shape "
                         f"{logits.shape}; got {labels.shape}. Integer labels have shape "
                         f"{logits.shape[:-1]}.")
    return False


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of softmax(logits) against labels.

    L = −(1/N) Σₙ Σ_k yₙₖ log softmax(zₙ)_k, with log softmax(z)_k = z_k − m −
    log Σ_j e^{z_j − m}, m = max_j z_j (no overflow for logits of ±1e4).

    Args:
      logits: (..., classes) unnormalized scores z.
      labels: integer class indices of shape (...), or one-hot / probability
        vectors of the logits' shape.

    Returns:
      A scalar, the mean over the N examples.

    Example:
        >>> fnn.losses.softmax_cross_entropy(logits, jnp.array([3, 0, 9]))
    """
    logits = _float_logits(logits, "softmax_cross_entropy")
    log_p = jax.nn.log_softmax(logits, axis=-1)
    if _integer_labels(logits, labels, "softmax_cross_entropy"):
        picked = jnp.take_along_axis(log_p, jnp.asarray(labels)[..., None], axis=-1)[..., 0]
        return -jnp.mean(picked)
    return -jnp.mean(jnp.sum(jnp.asarray(labels, log_p.dtype) * log_p, axis=-1))


def binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of sigmoid(logits) against labels in [0, 1].

    L = mean(−y log σ(z) − (1 − y) log(1 − σ(z))) = mean(max(z, 0) − z·y + log(1 + e^{−|z|})),
    the right-hand form being stable for any z; its gradient is (σ(z) − y) / n
    everywhere, z = 0 included.

    Args:
      logits: unnormalized scores z (any shape).
      labels: targets y in [0, 1] of the logits' shape.

    Returns:
      A scalar, the mean over every element.

    Example:
        >>> fnn.losses.binary_cross_entropy(jnp.array([2.0, -1.0]), jnp.array([1.0, 0.0]))
    """
    z = _float_logits(logits, "binary_cross_entropy", class_axis=False)
    labels = jnp.asarray(labels)
    if labels.shape != z.shape:
        raise ValueError(f"binary_cross_entropy: labels must have the logits' shape {z.shape};"
                         f" got {labels.shape}.")
    # max(z, 0) and −|z| written with one-sided derivatives that add up to σ(0) at z = 0
    # (jnp.maximum's 1/2 and jnp.abs's 1 at 0 would give σ(0) − y − 1/2 there)
    positive = z > 0
    relu, minus_abs = jnp.where(positive, z, 0.0), jnp.where(positive, -z, z)
    return jnp.mean(relu - z * labels.astype(z.dtype) + jnp.log1p(jnp.exp(minus_abs)))


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error: L = mean((p − t)²) over every element.

    Args:
      predictions: p, any shape.
      targets: t, the same shape.

    Returns:
      A scalar.

    Example:
        >>> fnn.losses.mse(jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]))   # 2.0
    """
    predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
    if predictions.shape != targets.shape:
        raise ValueError(f"mse: predictions {predictions.shape} and targets {targets.shape} "
                         "must have the same shape.")
    return jnp.mean(jnp.square(predictions - targets))


def _penalized(params: Any, mask: Any, owner: str) -> list:
    if mask is None:
        mask = jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)
    elif callable(mask):
        mask = mask(params)
    if jax.tree_util.tree_structure(mask) != jax.tree_util.tree_structure(params):
        raise ValueError(f"{owner}: mask must have the structure of params:\n  mask: "
                         f"{jax.tree_util.tree_structure(mask)}\n  params: "
                         f"{jax.tree_util.tree_structure(params)}")
    leaves = []
    for (path, p), m in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                            jax.tree_util.tree_leaves(mask)):
        if not isinstance(m, (bool, np.bool_)):
            raise TypeError(f"{owner}: mask leaves must be Python bools; got {m!r} at "
                            f"{jax.tree_util.keystr(path)}.")
        if m:
            leaves.append(p)
    return leaves


def l2_penalty(params: Any, mask: Any = None) -> jax.Array:
    """The squared L2 (Frobenius) norm of the penalized params: Σ w².

    The source texts' convention: the regularized loss is J + λ Σᵢ ‖W⁽ⁱ⁾‖²_F, the
    squared norm being "the sum of the squares of the elements" (no ½). Its
    gradient is 2w, so ``loss + λ · l2_penalty(params)`` decays weights like
    ``optimizers.add_decayed_weights(2λ)``. Biases are not penalized by default:
    without a mask only leaves with ndim ≥ 2 (weight matrices, kernels) count.

    Args:
      params: a pytree of arrays.
      mask: a pytree of bools with the structure of params, or a function
        ``params -> pytree of bools``, selecting the penalized leaves.

    Returns:
      A scalar.

    Example:
        >>> loss = data_loss + 1e-4 * fnn.losses.l2_penalty(params)
        >>> fnn.losses.l2_penalty({"w": jnp.array([[1.0, -2.0]]), "b": jnp.ones(2)})   # 5.0
    """
    leaves = _penalized(params, mask, "l2_penalty")
    return sum(jnp.sum(jnp.square(p)) for p in leaves) if leaves else jnp.zeros(())


def l1_penalty(params: Any, mask: Any = None) -> jax.Array:
    """The L1 norm of the penalized params: Σ |w| (weights only by default, as l2_penalty).

    Its gradient is sign(w) (0 at w = 0), which pushes small weights to exactly zero
    (sparse weights).

    Args:
      params: a pytree of arrays.
      mask: as :func:`l2_penalty`.

    Returns:
      A scalar.

    Example:
        >>> loss = data_loss + 1e-5 * fnn.losses.l1_penalty(params)
    """
    leaves = _penalized(params, mask, "l1_penalty")
    # |w| as w·sign(w): its derivative is sign(w), 0 at w = 0 (jnp.abs has 1 there), so
    # weights at exactly zero stay there
    return sum(jnp.sum(p * jnp.sign(p)) for p in leaves) if leaves else jnp.zeros(())


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples whose largest logit is the label: mean(argmax z = y).

    Args:
      logits: (..., classes) scores.
      labels: integer class indices or one-hot vectors (their argmax is the class).

    Returns:
      A scalar in [0, 1].

    Example:
        >>> fnn.losses.accuracy(jnp.array([[0.1, 0.9], [0.8, 0.2]]), jnp.array([1, 1]))   # 0.5
    """
    logits = _float_logits(logits, "accuracy")
    if not _integer_labels(logits, labels, "accuracy"):
        labels = jnp.argmax(labels, axis=-1)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


__all__ = ["accuracy", "binary_cross_entropy", "l1_penalty", "l2_penalty", "mse",
           "softmax_cross_entropy"]
