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


def _concrete(x: Any) -> np.ndarray | None:
    """A NumPy copy of a value that is concrete here, or None for a tracer.

    Value checks use it and never ``jnp``: a constant captured by a jitted function
    is concrete, but any jnp operation on it inside the trace is traced.
    """
    return None if isinstance(x, jax.core.Tracer) else np.asarray(x)


def _first(bad: np.ndarray) -> tuple[str, tuple, int]:
    """``labels[i, j]``, the position of the first True of ``bad``, and how many there are."""
    index = np.unravel_index(int(np.argmax(bad)), bad.shape)
    where = f"labels[{', '.join(str(int(i)) for i in index)}]" if bad.ndim else "labels"
    return where, index, int(bad.sum())


def _nan_unless(valid: jax.Array, value: jax.Array) -> jax.Array:
    """value where valid, NaN elsewhere (one select): a bad traced label makes the loss NaN.

    A select, not a product with NaN: XLA may rewrite float(bool) · NaN as a select
    of 0, which would hide the NaN.
    """
    return jnp.where(valid, value, jnp.asarray(jnp.nan, value.dtype))


def _as_array(owner: str, name: str, value: Any) -> jax.Array:
    try:
        return jnp.asarray(value)
    except TypeError as error:
        raise TypeError(f"{owner}: {name} must be an array of numbers; got "
                        f"{type(value).__name__} {str(value)[:40]}.") from error


def _labels(logits: jax.Array, labels: Any, owner: str) -> tuple[jax.Array, bool, Any]:
    """(labels, integer?, validity) with shapes and, if concrete, values checked.

    Integer labels are class indices in [0, classes) of shape logits.shape[:-1];
    otherwise labels are one-hot or probability rows of the logits' shape, >= 0 and
    summing to 1. Concrete labels out of range raise a ValueError naming the first
    bad position; for traced labels, validity is the boolean array (per example)
    that the caller turns into NaN, else None.
    """
    array = _as_array(owner, "labels", labels)
    classes, batch_shape = logits.shape[-1], logits.shape[:-1]
    if jnp.issubdtype(array.dtype, jnp.integer):
        if array.shape != batch_shape:
            hint = (" (integer one-hot labels? pass them as floats, labels.astype(jnp.float32),"
                    " or as class indices)") if array.shape == logits.shape else ""
            raise ValueError(f"{owner}: integer labels must have shape {batch_shape} (logits "
                             f"without the class axis); got {array.shape}{hint}.")
        concrete = _concrete(labels)
        if concrete is None:
            return array, True, (array >= 0) & (array < classes)
        bad = (concrete < 0) | (concrete >= classes)
        if bad.any():
            where, index, count = _first(bad)
            raise ValueError(f"{owner}: labels must be class indices in [0, {classes}) (the "
                             f"logits have {classes} classes); got {concrete[index]} at {where} "
                             f"({count} of {concrete.size} labels out of range).")
        return array, True, None
    if array.shape != logits.shape:
        hint = (" They look like class indices: pass integers, labels.astype(jnp.int32)."
                if array.shape == batch_shape else
                f" Integer class labels have shape {batch_shape}.")
        raise ValueError(f"{owner}: one-hot (or probability) labels must have the logits' shape "
                         f"{logits.shape}; got {array.shape} of dtype {array.dtype}.{hint}")
    if array.dtype == jnp.bool_:
        array = array.astype(logits.dtype)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"{owner}: labels must be integers or floats; got {array.dtype}.")
    # rows of probabilities: >= 0 and Σ = 1 up to the rounding of the labels' dtype
    tol = float(np.sqrt(np.finfo(array.dtype).eps))
    concrete = _concrete(labels)
    if concrete is None:
        valid = jnp.all(array >= 0, -1) & (jnp.abs(jnp.sum(array, -1) - 1) <= tol)
        return array, False, valid
    concrete = concrete.astype(np.float64)
    sums = concrete.sum(-1)
    bad = ~(np.all(concrete >= 0, -1) & (np.abs(sums - 1) <= tol))
    if bad.any():
        where, index, count = _first(bad)
        raise ValueError(f"{owner}: one-hot (or probability) labels must be >= 0 and sum to 1 "
                         f"over the class axis; {where} sums to {sums[index]:g} with minimum "
                         f"{concrete[index].min():g} ({count} of {bad.size} rows invalid).")
    return array, False, None


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of softmax(logits) against labels.

    L = −(1/N) Σₙ Σ_k yₙₖ log softmax(zₙ)_k, with log softmax(z)_k = z_k − m −
    log Σ_j e^{z_j − m}, m = max_j z_j (no overflow for logits of ±1e4).

    Args:
      logits: (..., classes) unnormalized scores z.
      labels: integer class indices in [0, classes) of shape (...), or one-hot /
        probability vectors of the logits' shape (>= 0, summing to 1).

    Returns:
      A scalar, the mean over the N examples. Concrete labels out of range raise a
      ValueError naming the first bad one; traced labels out of range (under
      ``jit``/``vmap``) make the loss and its gradient NaN, never a finite number.

    Example:
        >>> fnn.losses.softmax_cross_entropy(logits, jnp.array([3, 0, 9]))
    """
    logits = _float_logits(logits, "softmax_cross_entropy")
    labels, integer, valid = _labels(logits, labels, "softmax_cross_entropy")
    log_p = jax.nn.log_softmax(logits, axis=-1)
    if integer:
        per_example = jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    else:
        per_example = jnp.sum(labels.astype(log_p.dtype) * log_p, axis=-1)
    if valid is not None:  # traced labels: NaN for a bad one (e.g. -1 would read the last class)
        per_example = _nan_unless(valid, per_example)
    return -jnp.mean(per_example)


def binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of sigmoid(logits) against labels in [0, 1].

    L = mean(−y log σ(z) − (1 − y) log(1 − σ(z))) = mean(max(z, 0) − z·y + log(1 + e^{−|z|})),
    the right-hand form being stable for any z; its gradient is (σ(z) − y) / n
    everywhere, z = 0 included.

    Args:
      logits: unnormalized scores z (any shape).
      labels: targets y in [0, 1] of the logits' shape.

    Returns:
      A scalar, the mean over every element. Concrete labels outside [0, 1]
      raise a ValueError; traced ones make the loss NaN.

    Example:
        >>> fnn.losses.binary_cross_entropy(jnp.array([2.0, -1.0]), jnp.array([1.0, 0.0]))
    """
    z = _float_logits(logits, "binary_cross_entropy", class_axis=False)
    y = _as_array("binary_cross_entropy", "labels", labels)
    if y.shape != z.shape:
        raise ValueError(f"binary_cross_entropy: labels must have the logits' shape {z.shape};"
                         f" got {y.shape}.")
    if not (jnp.issubdtype(y.dtype, jnp.number) or y.dtype == jnp.bool_):
        raise TypeError(f"binary_cross_entropy: labels must be numbers in [0, 1]; got {y.dtype}.")
    y = y.astype(z.dtype)
    # max(z, 0) and −|z| written with one-sided derivatives that add up to σ(0) at z = 0
    # (jnp.maximum's 1/2 and jnp.abs's 1 at 0 would give σ(0) − y − 1/2 there)
    positive = z > 0
    relu, minus_abs = jnp.where(positive, z, 0.0), jnp.where(positive, -z, z)
    per_element = relu - z * y + jnp.log1p(jnp.exp(minus_abs))
    concrete = _concrete(labels)
    if concrete is None:  # traced: NaN for a label outside [0, 1] (it gives a negative loss)
        per_element = _nan_unless((y >= 0) & (y <= 1), per_element)
    else:
        bad = ~((concrete >= 0) & (concrete <= 1))  # NaN labels too
        if bad.any():
            where, index, count = _first(bad)
            raise ValueError(f"binary_cross_entropy: labels must be in [0, 1]; got "
                             f"{concrete[index]} at {where} ({count} of {concrete.size} labels "
                             "out of range).")
    return jnp.mean(per_element)


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
                         "must have the same shape (mse does not broadcast: (n, 1) against (n,) "
                         "would compare every prediction with every target); reshape one, e.g. "
                         "targets.reshape(predictions.shape).")
    return jnp.mean(jnp.square(predictions - targets))


def _paths(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _penalized(params: Any, mask: Any, owner: str) -> list:
    if mask is None:
        mask = jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)
    elif callable(mask):
        mask = mask(params)
    if jax.tree_util.tree_structure(mask) != jax.tree_util.tree_structure(params):
        mask_paths, param_paths = _paths(mask), _paths(params)
        only_mask = [p for p in mask_paths if p not in set(param_paths)]
        only_params = [p for p in param_paths if p not in set(mask_paths)]
        raise ValueError(f"{owner}: mask must have the structure of params (one bool per "
                         f"params leaf):\n  mask: {jax.tree_util.tree_structure(mask)}\n  params: "
                         f"{jax.tree_util.tree_structure(params)}\n  only in mask: {only_mask}\n"
                         f"  only in params: {only_params}")
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
      labels: integer class indices or one-hot vectors (their argmax is the class),
        checked as in :func:`softmax_cross_entropy`.

    Returns:
      A scalar in [0, 1]; NaN for traced labels out of range.

    Example:
        >>> fnn.losses.accuracy(jnp.array([[0.1, 0.9], [0.8, 0.2]]), jnp.array([1, 1]))   # 0.5
    """
    logits = _float_logits(logits, "accuracy")
    labels, integer, valid = _labels(logits, labels, "accuracy")
    if not integer:
        labels = jnp.argmax(labels, axis=-1)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.result_type(float))
    if valid is not None:  # traced labels: NaN for a bad one, as the losses
        correct = _nan_unless(valid, correct)
    return jnp.mean(correct)


__all__ = ["accuracy", "binary_cross_entropy", "l1_penalty", "l2_penalty", "mse",
           "softmax_cross_entropy"]
