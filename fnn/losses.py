"""Losses, penalties and metrics. Each loss is a mean over the batch (leading axes)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def _integer_labels(logits: jax.Array, labels: jax.Array, owner: str) -> bool:
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != logits.shape[:-1]:
            raise ValueError(f"{owner}: integer labels must have shape {logits.shape[:-1]} "
                             f"(logits without the class axis); got {labels.shape}.")
        return True
    if labels.shape != logits.shape:
        raise ValueError(f"{owner}: one-hot (or probability) labels must have the logits' shape "
                         f"{logits.shape}; got {labels.shape}. Integer labels have shape "
                         f"{logits.shape[:-1]}.")
    return False


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of softmax(logits) against labels.

    L = −(1/N) Σₙ Σ_k yₙₖ log softmax(zₙ)_k, with log softmax(z)_k = z_k − log Σ_j e^{z_j}
    computed stably (no overflow for logits of ±1e4). ``labels`` are integer
    class indices (shape = logits without the last axis) or one-hot /
    probability vectors (the logits' shape).

    Example:
        >>> fnn.losses.softmax_cross_entropy(logits, jnp.array([3, 0, 9]))
    """
    logits = jnp.asarray(logits)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    if _integer_labels(logits, labels, "softmax_cross_entropy"):
        picked = jnp.take_along_axis(log_p, jnp.asarray(labels)[..., None], axis=-1)[..., 0]
        return -jnp.mean(picked)
    return -jnp.mean(jnp.sum(jnp.asarray(labels, log_p.dtype) * log_p, axis=-1))


def binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of sigmoid(logits) against labels in [0, 1].

    L = mean(−y log σ(z) − (1 − y) log(1 − σ(z))) = mean(max(z, 0) − z·y + log(1 + e^{−|z|})),
    the right-hand form being stable for any z.

    Example:
        >>> fnn.losses.binary_cross_entropy(jnp.array([2.0, -1.0]), jnp.array([1.0, 0.0]))
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if labels.shape != logits.shape:
        raise ValueError(f"binary_cross_entropy: labels must have the logits' shape {logits.shape};"
                         f" got {labels.shape}.")
    labels = labels.astype(logits.dtype)
    return jnp.mean(jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error: L = mean((p − t)²).

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
    return [p for p, m in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask))
            if m]


def l2_penalty(params: Any, mask: Any = None) -> jax.Array:
    """Half the squared L2 norm of the penalized params: ½ Σ w².

    Its gradient is w, so ``loss + λ · l2_penalty(params)`` decays weights like
    ``optimizers.add_decayed_weights(λ)``. Biases are not penalized by default:
    without a mask only leaves with ndim ≥ 2 (weight matrices, kernels) count.

    Args:
      params: a pytree.
      mask: pytree of bools or ``params -> pytree of bools`` selecting the leaves.

    Example:
        >>> loss = data_loss + 1e-4 * fnn.losses.l2_penalty(params)
    """
    leaves = _penalized(params, mask, "l2_penalty")
    return 0.5 * sum(jnp.sum(jnp.square(p)) for p in leaves) if leaves else jnp.zeros(())


def l1_penalty(params: Any, mask: Any = None) -> jax.Array:
    """The L1 norm of the penalized params: Σ |w| (weights only by default, as l2_penalty).

    Example:
        >>> loss = data_loss + 1e-5 * fnn.losses.l1_penalty(params)
    """
    leaves = _penalized(params, mask, "l1_penalty")
    return sum(jnp.sum(jnp.abs(p)) for p in leaves) if leaves else jnp.zeros(())


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples whose largest logit is the label (integer or one-hot labels).

    Example:
        >>> fnn.losses.accuracy(logits, labels)
    """
    logits = jnp.asarray(logits)
    if not _integer_labels(logits, labels, "accuracy"):
        labels = jnp.argmax(labels, axis=-1)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
