"""Training: a jit-compiled train step for any loss function, an epoch loop, evaluation.

The one contract is the loss function::

    def loss_fn(params, model_state, batch, key):
        ...
        return loss, (new_model_state, metrics)      # metrics: a dict of scalars

It need not use fnn layers: plain functions of a params pytree work the same.
:func:`make_train_step` compiles loss, gradient and optimizer update into one
step that donates the previous :class:`TrainState` (params, model state and
optimizer state are updated in place). :func:`make_epoch` compiles a whole
epoch (shuffle, then ``lax.scan`` over the mini-batches) into one program, and
:func:`fit` runs epochs with a progress bar and keeps a history of metrics.

Everything is deterministic given the key, and :func:`fit` continues from the
state's step counter: ``fit`` for 5 epochs, save, restore, ``fit`` for 5 more
gives the result of 10 epochs. Given a ``jax.sharding.Mesh``, the step runs
data-parallel: the batch is split over the mesh's ``batch_axis`` and params,
model state and optimizer state are replicated on every device.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import optimizers as opt

from . import sharding as _sharding
from ._mesh_step import jit_epoch
from ._step import (
    LossFn,
    TrainState,
    check_callable,
    check_state,
    epoch_layout,
    init_train_state,
    make_epoch,
    make_train_step,
    train_step_fn,
)
from .data import _check_finite, _check_int, _check_key, _num_examples

__all__ = [
    "LossFn", "NonFiniteLossError", "TrainState", "classifier", "evaluate", "fit",
    "init_train_state", "jit_epoch", "make_epoch", "make_train_step", "run_epochs",
    "steps_per_second", "train_step_fn",
]


class NonFiniteLossError(FloatingPointError):
    """:func:`fit` stopped because an epoch's training loss was NaN or infinite.

    Attributes: ``epoch`` (the epoch whose loss was not finite), ``state`` (the
    state after that epoch) and ``history`` (the metrics up to and including it).
    """

    def __init__(self, message: str, epoch: int, state: TrainState, history: dict):
        super().__init__(message)
        self.epoch, self.state, self.history = epoch, state, history


# ------------------------------------------------------------------ the epoch loop


def first_epoch(state: TrainState, steps_per_epoch: int) -> int:
    """The epoch a run continues from: the state's steps over the steps per epoch, rounded up."""
    return math.ceil(int(state.step) / steps_per_epoch)


def run_epochs(epoch_fn: Callable, state: Any, data: Any, key: jax.Array, first: int,
               epochs: int, after_epoch: Callable[[int, Any, dict], None]) -> Any:
    """Runs epochs ``first … first + epochs − 1``; epoch e gets the key ``fold_in(key, e)``.

    The one epoch loop of the package (:func:`fit` and
    :func:`fnn.tuning.parallel_fit` both run it): ``after_epoch(e, state,
    metrics)`` is called after each epoch (metrics still on the device).

    Example:
        >>> epoch = jax.jit(make_epoch(loss_fn, tx, 64), donate_argnums=0)
        >>> curve = []
        >>> state = run_epochs(epoch, state, (x, y), key, 0, 10,
        ...                    lambda e, s, m: curve.append(m["loss"]))
    """
    for e in range(first, first + epochs):
        state, metrics = epoch_fn(state, data, jax.random.fold_in(key, e))
        after_epoch(e, state, metrics)
    return state


# ------------------------------------------------------------------ checks of concrete data


def _check_like(owner: str, name: str, data: Any, reference: Any, reference_name: str) -> None:
    """``data``'s leaves must have the reference's structure and per-example shapes."""
    leaves, reference_leaves = jax.tree_util.tree_leaves(data), jax.tree_util.tree_leaves(reference)
    if len(leaves) != len(reference_leaves):
        raise ValueError(
            f"{owner}: {name} must have the structure of {reference_name}; got "
            f"{jax.tree_util.tree_structure(data)}, {reference_name} is "
            f"{jax.tree_util.tree_structure(reference)}."
        )
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(reference)]
    for path, leaf, ref in zip(paths, leaves, reference_leaves):
        if np.shape(leaf)[1:] != np.shape(ref)[1:]:
            raise ValueError(
                f"{owner}: {name}{path} has examples of shape {np.shape(leaf)[1:]}, but "
                f"{reference_name}{path} has examples of shape {np.shape(ref)[1:]} "
                f"(full shapes {np.shape(leaf)} and {np.shape(ref)})."
            )


def _check_data(owner: str, fn: Any, name: str, data: Any, state: TrainState) -> None:
    """Runs the check a loss/eval function carries (``fn.check_data``), e.g. label ranges."""
    check = getattr(fn, "check_data", None)
    if check is not None:
        check(owner, name, data, state.unpacked_params(), state.model_state)


def _copy(state: TrainState) -> TrainState:
    """A copy of the state's arrays: the epochs donate the copy, the caller keeps the original."""
    return jax.tree_util.tree_map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)


def check_fit_inputs(owner: str, loss_fn: Any, state: Any, train_data: Any, batch_size: Any,
                     drop_remainder: Any, val_data: Any, eval_fn: Any) -> int:
    """The checks :func:`fit` and :func:`fnn.tuning.parallel_fit` run once before training.

    Returns the number of steps per epoch.
    """
    check_callable(owner, "loss_fn", loss_fn)
    check_state(owner, state)
    batch_size = _check_int(owner, "batch_size", batch_size, 1)
    if not isinstance(drop_remainder, bool):
        raise TypeError(f"{owner}: drop_remainder must be True or False; got {drop_remainder!r}.")
    if (val_data is None) != (eval_fn is None):
        given, missing = ("val_data", "eval_fn") if eval_fn is None else ("eval_fn", "val_data")
        raise ValueError(f"{owner}: {given} was given without {missing}; validation needs both.")
    n = _num_examples(owner, train_data, "train_data")
    full, last = epoch_layout(owner, n, batch_size, drop_remainder)
    _check_finite(owner, "train_data", train_data)
    _check_data(owner, loss_fn, "train_data", train_data, state)
    if val_data is not None:
        check_callable(owner, "eval_fn", eval_fn)
        if _num_examples(owner, val_data, "val_data") == 0:
            raise ValueError(f"{owner}: val_data holds no examples.")
        _check_like(owner, "val_data", val_data, train_data, "train_data")
        _check_finite(owner, "val_data", val_data)
        _check_data(owner, eval_fn, "val_data", val_data, state)
    return full + (last > 0)


# ------------------------------------------------------------------ fit and evaluate


def evaluate(eval_fn: Callable[[Any, Any, Any], dict], state: TrainState, data: Any,
             batch_size: int | None = None) -> dict:
    """Metrics of ``eval_fn(params, model_state, batch) -> dict`` over ``data``.

    With ``batch_size``, the data are evaluated in batches and the metrics
    averaged weighted by batch size (``eval_fn`` must return per-batch means).

    Example:
        >>> fnn.train.evaluate(eval_fn, state, (x_val, y_val))["accuracy"]
    """
    check_callable("evaluate", "eval_fn", eval_fn)
    check_state("evaluate", state)
    n = _num_examples("evaluate", data)
    size = n if batch_size is None else _check_int("evaluate", "batch_size", batch_size, 1)
    if n == 0:
        raise ValueError("evaluate: data holds no examples.")
    _check_data("evaluate", eval_fn, "data", data, state)
    params = state.unpacked_params()
    totals: dict[str, float] = {}
    for start in range(0, n, size):
        batch = jax.tree_util.tree_map(lambda x, i=start: x[i:i + size], data)
        count = _num_examples("evaluate", batch)
        metrics = eval_fn(params, state.model_state, batch)
        if not isinstance(metrics, dict):
            raise TypeError(f"evaluate: eval_fn must return a dict of metrics; got "
                            f"{type(metrics).__name__}.")
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + float(v) * count
    return {k: v / n for k, v in totals.items()}


def _progress(total: int, enabled: bool, description: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the examples and test extras
        return None
    return tqdm(total=total, desc=description, unit="epoch", leave=False)


def _nonfinite_message(loss: float, epoch: int) -> str:
    return (
        f"fit: the training loss is {loss} in epoch {epoch} (counting from 0). Likely causes: a "
        "learning rate too large for the model (training diverged), a loss that takes log(0) or "
        "divides by zero, or labels outside the range the loss expects. Lower the learning rate "
        "or check the loss; pass on_nonfinite='warn' to carry on with a warning instead."
    )


def fit(loss_fn: LossFn, tx: opt.Optimizer, state: TrainState, train_data: Any, *,
        key: jax.Array, epochs: int, batch_size: int, val_data: Any = None,
        eval_fn: Callable | None = None, progress: bool = True, description: str = "train",
        drop_remainder: bool = False, epoch_fn: Callable | None = None,
        on_nonfinite: str = "raise", donate: bool = False, mesh: Any = None,
        sharding: Any = None, batch_axis: str = "data",
        ) -> tuple[TrainState, dict]:
    """Trains for ``epochs`` epochs; returns the final state and a history of metrics.

    Each epoch is one compiled program (:func:`make_epoch`) that donates the
    state it trains; ``fit`` first copies the ``state`` it is given (once), so
    the caller's state stays usable (``donate=True`` skips the copy and
    consumes it). ``history`` holds per-epoch lists: ``train_<metric>`` (means
    over the epoch), ``val_<metric>`` when ``val_data`` and ``eval_fn`` are
    given, and ``time`` (seconds since the start, compilation included).

    Epochs are numbered from the state's step counter: epoch e uses the key
    ``fold_in(key, e)`` with e starting at ⌈state.step / steps per epoch⌉, so a
    run continued from a saved state (same key, data and batch size) equals one
    uninterrupted run. Before training, the data are checked once on the host:
    same number of examples in every array, finite values, validation examples
    shaped like the training examples, and whatever the loss function's
    ``check_data`` checks (:func:`classifier`'s: label ranges). After each
    epoch the training loss, already on the host for the history, must be
    finite (see ``on_nonfinite``).

    Args:
      loss_fn: ``loss_fn(params, model_state, batch, key) -> (loss, (model_state, metrics))``.
      tx: the optimizer (its state is ``state.opt_state``).
      state: from :func:`init_train_state`.
      train_data: an array or pytree of arrays with a shared first axis (kept on device).
      key: PRNG key; epoch e uses ``fold_in(key, e)`` (deterministic given the key).
      epochs: number of epochs (an int >= 0).
      batch_size: mini-batch size (a remainder of one example joins the last batch,
        see :func:`make_epoch`).
      val_data: optional validation data for ``eval_fn`` (give both or neither).
      eval_fn: ``eval_fn(params, model_state, batch) -> dict`` of metric means.
      progress: show a tqdm progress bar.
      drop_remainder: leave out the last ``n mod batch_size`` examples of each epoch.
      epoch_fn: the compiled epoch to run, e.g. ``jax.jit(make_epoch(...)).lower(...).compile()``
        prepared ahead (in another thread, while something else trains); default: built here.
      on_nonfinite: ``"raise"`` (default) stops with :class:`NonFiniteLossError`
        when an epoch's training loss is NaN or infinite; ``"warn"`` warns once and carries on.
      donate: let the epochs consume the caller's ``state`` instead of a copy
        (saves the memory of one copy; ``state`` is unusable afterwards).
      mesh: optional ``jax.sharding.Mesh``: train on all its devices, each
        mini-batch split over ``batch_axis`` (any batch size), the training data
        replicated on every device. The result equals training on one device
        up to float rounding.
      sharding: with a mesh, the state's placement (see :mod:`fnn.sharding`):
        ``None`` (default) keeps the one ``state`` has (from
        ``init_train_state(..., mesh=mesh, sharding=...)``; replicated if it is
        not on the mesh), or ``"replicated"``, ``"fsdp"``, a function
        ``(path, shape) -> PartitionSpec`` or a pytree of ``PartitionSpec``.
        The returned state has this placement.
      batch_axis: the mesh axis batches (and FSDP params) are split over.

    Raises:
      NonFiniteLossError: an epoch's training loss was not finite (with ``on_nonfinite="raise"``).

    Example:
        >>> state, history = fnn.train.fit(loss_fn, tx, state, (x, y), key=key,
        ...                                epochs=30, batch_size=64)
        >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
        >>> state, history = fnn.train.fit(loss_fn, tx, state, (x, y), key=key, epochs=30,
        ...                                batch_size=64, mesh=mesh, sharding="fsdp")
    """
    opt._base.check_optimizer("fit", "tx", tx)
    _check_key("fit", key)
    epochs = _check_int("fit", "epochs", epochs, 0)
    if on_nonfinite not in ("raise", "warn"):
        raise ValueError(f"fit: on_nonfinite must be 'raise' or 'warn'; got {on_nonfinite!r}.")
    for name, flag in (("progress", progress), ("donate", donate)):
        if not isinstance(flag, bool):
            raise TypeError(f"fit: {name} must be True or False; got {flag!r}.")
    if epoch_fn is not None:
        check_callable("fit", "epoch_fn", epoch_fn)
    steps_per_epoch = check_fit_inputs("fit", loss_fn, state, train_data, batch_size,
                                       drop_remainder, val_data, eval_fn)
    start_epoch = first_epoch(state, steps_per_epoch)
    if mesh is None:
        if sharding is not None:
            raise ValueError("fit: sharding= needs a mesh; pass mesh= too.")
        train_data = jax.tree_util.tree_map(jnp.asarray, train_data)
        state = state if donate else _copy(state)
        placement = None
    else:
        mesh = _sharding.auto_mesh("fit", mesh, batch_axis)
        if sharding is not None:
            _sharding.check_rule("fit", sharding)
        placement = _sharding.resolve("fit", state, mesh, sharding, batch_axis)
        train_data = _sharding.place(train_data, jax.tree_util.tree_map(
            lambda _: _sharding.replicated(mesh), train_data))
        # placing copies (the caller's state stays usable) unless donating
        state = jax.device_put(state, placement) if donate else _sharding.place(state, placement)
    if epoch_fn is None:
        epoch_fn = jit_epoch(loss_fn, tx, batch_size, drop_remainder=drop_remainder, mesh=mesh,
                             batch_axis=batch_axis, sharding=placement, state=state)
    evaluate_fn = jax.jit(eval_fn) if eval_fn is not None else None
    history: dict[str, list] = {"time": []}
    bar = _progress(epochs, progress, description)
    warned = False
    start = time.perf_counter()

    def after_epoch(e: int, state: TrainState, metrics: dict) -> None:
        nonlocal warned
        row = {f"train_{k}": float(v) for k, v in metrics.items()}
        if evaluate_fn is not None:
            row.update({f"val_{k}": float(v) for k, v in
                        evaluate_fn(state.unpacked_params(), state.model_state, val_data).items()})
        for k, v in row.items():
            history.setdefault(k, []).append(v)
        history["time"].append(time.perf_counter() - start)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()})
        loss = row.get("train_loss", 0.0)
        if not math.isfinite(loss):
            if on_nonfinite == "raise":
                raise NonFiniteLossError(_nonfinite_message(loss, e), e, state, history)
            if not warned:
                warnings.warn(_nonfinite_message(loss, e), RuntimeWarning, stacklevel=4)
                warned = True

    try:
        state = run_epochs(epoch_fn, state, train_data, key, start_epoch, epochs, after_epoch)
    finally:
        if bar is not None:
            bar.close()
    return state, history


# ------------------------------------------------------------------ classifiers


def _label_checker(model: Any) -> Callable:
    """The one-time check of a classifier's concrete (x, y): labels against the model's classes."""

    def check_data(owner: str, name: str, data: Any, params: Any, model_state: Any) -> None:
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise TypeError(f"{owner}: a classifier's {name} must be a pair (x, y); got "
                            f"{jax.tree_util.tree_structure(data)}.")
        x, y = data
        if isinstance(x, jax.core.Tracer) or isinstance(y, jax.core.Tracer):
            return  # traced: the loss itself turns bad labels into NaN
        example = jax.ShapeDtypeStruct((1,) + tuple(np.shape(x)[1:]), jnp.result_type(x))
        logits = jax.eval_shape(lambda p, s, xb: model.apply(p, s, xb)[0],
                                params, model_state, example)
        classes = logits.shape[-1]
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


def steps_per_second(history: dict, steps_per_epoch: int) -> float:
    """Training steps per second after the first epoch (which includes compilation)."""
    times = history.get("time", [])
    if len(times) < 2:
        return float("nan")
    return steps_per_epoch * (len(times) - 1) / (times[-1] - times[0])
