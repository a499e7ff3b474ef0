"""Classifiers for :mod:`fnn.train`: loss and evaluation functions of a model, label checks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._step import LossFn


def _label_checker(model: Any) -> Callable:
    """The one-time check of a classifier's concrete (x, y): labels against the model's classes."""

    classes_of: dict = {}  # (example shape, dtype, param shapes) -> the model's outputs

    def check_data(owner: str, name: str, data: Any, params: Any, model_state: Any) -> None:
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise TypeError(f"{owner}: a classifier's {name} must be a pair (x, y); got "
                            f"{jax.tree_util.tree_structure(data)}.")
        x, y = data
        if isinstance(x, jax.core.Tracer) or isinstance(y, jax.core.Tracer):
            return  # traced: the loss itself turns bad labels into NaN
        example = jax.ShapeDtypeStruct((1,) + tuple(np.shape(x)[1:]), jnp.result_type(x))
        leaves, treedef = jax.tree_util.tree_flatten((params, model_state))
        signature = (example.shape, example.dtype, treedef,
                     tuple((np.shape(a), getattr(a, "dtype", type(a))) for a in leaves))
        if signature not in classes_of:  # streamed data check every batch: trace the model once
            logits = jax.eval_shape(lambda p, s, xb: model.apply(p, s, xb)[0],
                                    params, model_state, example)
            classes_of[signature] = logits.shape[-1]
        classes = classes_of[signature]
        labels = np.asarray(y)
        if np.issubdtype(labels.dtype, np.integer):
            if labels.ndim != 1:
                raise ValueError(f"{owner}: {name} integer labels must have shape (examples,); "
                                 f"got {labels.shape}.")
            bad = (labels < 0) | (labels >= classes)
            if bad.any():
                row = int(np.argmax(bad))
                raise ValueError(
                    f"{owner}: {name} has {int(bad.sum())} labels outside [0, {classes}) (the "
                    f"model has {classes} outputs); first at row {row}: {int(labels[row])}."
                )
        elif jnp.issubdtype(labels.dtype, jnp.floating):
            if labels.shape[1:] != (classes,):
                raise ValueError(f"{owner}: {name} one-hot labels must have shape (examples, "
                                 f"{classes}) for the model's {classes} outputs; got "
                                 f"{labels.shape}.")
        else:
            raise TypeError(f"{owner}: {name} labels must be integer classes or one-hot floats; "
                            f"got dtype {labels.dtype}.")

    return check_data


def classifier(model: Any, *, l2: float = 0.0) -> tuple[LossFn, Callable]:
    """Loss and evaluation functions for a classifier built from fnn layers.

    loss = softmax cross-entropy(model(x), y) + l2 · Σw² (weights only, see
    ``fnn.losses.l2_penalty``); metrics: accuracy. The evaluation function runs
    the model in evaluation mode (running BatchNorm statistics, no dropout).
    Both carry ``check_data``, which :func:`fit` and :func:`evaluate` run once
    on the concrete data: labels must be classes 0 … C−1 for the model's C
    outputs (or one-hot rows of length C).

    Example:
        >>> loss_fn, eval_fn = fnn.train.classifier(model)
        >>> state, history = fnn.train.fit(loss_fn, tx, state, (x, y), key=key, epochs=10,
        ...                                batch_size=64, val_data=(xv, yv), eval_fn=eval_fn)
    """
    from . import losses

    if not (hasattr(model, "init") and hasattr(model, "apply")):
        raise TypeError(f"classifier: model must be a layer with init and apply (e.g. "
                        f"fnn.Sequential(...)); got {type(model).__name__}.")
    if isinstance(l2, bool) or not isinstance(l2, (int, float, np.integer, np.floating)) \
            or not 0 <= l2 < math.inf:
        raise ValueError(f"classifier: l2 must be a finite number >= 0; got {l2!r}.")

    def loss_fn(params, model_state, batch, key):
        x, y = batch
        logits, model_state = model.apply(params, model_state, x, key=key, train=True)
        loss = losses.softmax_cross_entropy(logits, y)
        if l2:
            loss = loss + l2 * losses.l2_penalty(params)
        return loss, (model_state, {"accuracy": losses.accuracy(logits, y)})

    def eval_fn(params, model_state, batch):
        x, y = batch
        logits, _ = model.apply(params, model_state, x)
        return {"loss": losses.softmax_cross_entropy(logits, y),
                "accuracy": losses.accuracy(logits, y)}

    loss_fn.check_data = eval_fn.check_data = _label_checker(model)
    return loss_fn, eval_fn
