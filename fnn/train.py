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
:func:`fit` also trains from batches that are not one device array (a function
``epoch -> iterable``, a generator, a memmap with ``stream=True``), moved to the
device ahead of use by :func:`prefetch`; :func:`evaluate` is compiled and
batched; :mod:`fnn.callbacks` log, stop early and checkpoint.

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

from . import _evaluate, _stream
from . import callbacks as _callbacks
from . import sharding as _sharding
from ._classifier import classifier
from ._evaluate import evaluate
from ._mesh_step import jit_epoch
from ._step import (
    PACK_MIN_LEAVES,
    LossFn,
    TrainState,
    check_callable,
    check_state,
    epoch_layout,
    init_train_state,
    make_epoch,
    make_train_step,
    packing_pays,
    train_step_fn,
)
from ._stream import prefetch
from .data import _check_finite, _check_int, _check_key, _num_examples

__all__ = [
    "LossFn", "NonFiniteLossError", "TrainState", "classifier", "evaluate", "fit",
    "PACK_MIN_LEAVES", "init_train_state", "jit_epoch", "packing_pays", "make_epoch",
    "make_train_step", "prefetch", "run_epochs",
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
               epochs: int, after_epoch: Callable[[int, Any, Any], Any]) -> Any:
    """Runs epochs ``first … first + epochs − 1``; epoch e gets the key ``fold_in(key, e)``.

    The one epoch loop of the package (:func:`fit`, in memory or streamed, and
    :func:`fnn.tuning.parallel_fit` run it): ``after_epoch(e, state, metrics)``
    is called after each epoch (metrics still on the device); a true result
    stops the loop (early stopping).

    Example:
        >>> epoch = jax.jit(make_epoch(loss_fn, tx, 64), donate_argnums=0)
        >>> curve = []
        >>> state = run_epochs(epoch, state, (x, y), key, 0, 10,
        ...                    lambda e, s, m: curve.append(m["loss"]))
    """
    for e in range(first, first + epochs):
        state, metrics = epoch_fn(state, data, jax.random.fold_in(key, e))
        if after_epoch(e, state, metrics):
            break
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
                     drop_remainder: Any, val_data: Any, eval_fn: Any,
                     streamed: bool = False) -> int | None:
    """The checks :func:`fit` and :func:`fnn.tuning.parallel_fit` run once before training.

    Returns the number of steps per epoch (``None`` for streamed training data,
    whose batches are checked as they are drawn).
    """
    check_callable(owner, "loss_fn", loss_fn)
    check_state(owner, state)
    if not isinstance(drop_remainder, bool):
        raise TypeError(f"{owner}: drop_remainder must be True or False; got {drop_remainder!r}.")
    if (val_data is None) != (eval_fn is None):
        given, missing = ("val_data", "eval_fn") if eval_fn is None else ("eval_fn", "val_data")
        raise ValueError(f"{owner}: {given} was given without {missing}; validation needs both.")
    steps = None
    if not streamed:
        if batch_size is None:
            raise TypeError(f"{owner}: array train_data needs batch_size (examples per step).")
        batch_size = _check_int(owner, "batch_size", batch_size, 1)
        full, last = epoch_layout(owner, _num_examples(owner, train_data, "train_data"),
                                  batch_size, drop_remainder)
        _check_finite(owner, "train_data", train_data)
        _check_data(owner, loss_fn, "train_data", train_data, state)
        steps = full + (last > 0)
    if val_data is not None:
        check_callable(owner, "eval_fn", eval_fn)
        if _stream.is_stream(val_data):
            if not callable(val_data) and iter(val_data) is val_data:
                raise ValueError(f"{owner}: val_data is a one-shot iterator, used up by the first "
                                 "evaluation; pass a list of batches, a re-iterable or a function "
                                 "() -> iterable.")
            return steps
        if _num_examples(owner, val_data, "val_data") == 0:
            raise ValueError(f"{owner}: val_data holds no examples.")
        if not streamed:
            _check_like(owner, "val_data", val_data, train_data, "train_data")
        _check_finite(owner, "val_data", val_data)
        _check_data(owner, eval_fn, "val_data", val_data, state)
    return steps


# ------------------------------------------------------------------ fit


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
        key: jax.Array, epochs: int, batch_size: int | None = None, val_data: Any = None,
        eval_fn: Callable | None = None, progress: bool = True, description: str = "train",
        drop_remainder: bool = False, epoch_fn: Callable | None = None,
        on_nonfinite: str = "raise", donate: bool = False, mesh: Any = None,
        sharding: Any = None, batch_axis: str = "data", stream: bool = False,
        prefetch: int = 2, steps_per_call: int = 8, steps_per_epoch: int | None = None,
        val_batch_size: int | None = None, eval_params: str = "params",
        callbacks: list | None = None, step_metrics: bool = False,
        ) -> tuple[TrainState, dict]:
    """Trains for ``epochs`` epochs; returns the final state and a history of metrics.

    **Array data** (an array or a tuple/list/dict of arrays, kept on the
    device): each epoch is one compiled program (:func:`make_epoch`: shuffle,
    then ``lax.scan`` over the mini-batches), the fast path. **Streamed data**:
    ``train_data`` a function ``epoch -> iterable of batches`` (a fresh
    iterable per epoch: a generator function, a ``tf.data``/grain loader), a
    re-iterable (iterated every epoch) or a one-shot iterator (one pass: only
    ``epochs=1``); or array data with ``stream=True`` (kept on the host, e.g. a
    NumPy memmap, and gathered there in the in-memory epoch's order). Batches
    are checked on the host (finite values, ``loss_fn.check_data``) and moved
    to the device by a background thread (:func:`prefetch`); runs of up to
    ``steps_per_call`` same-shape batches are stacked and trained by one
    compiled ``lax.scan``, step i of epoch e using the key of the in-memory
    epoch, so the same batches in the same order give the in-memory result (to
    float rounding). Each distinct batch shape (e.g. a smaller last batch)
    compiles once (chunk lengths: ``steps_per_call`` and powers of two below it).

    ``fit`` copies the ``state`` it is given (once) and donates the copy
    (``donate=True`` consumes ``state`` instead). ``history`` holds per-epoch
    lists: ``train_<metric>`` (means over the epoch's examples), ``val_<metric>``
    (with ``val_data`` and ``eval_fn``; :func:`evaluate`) and ``time`` (seconds
    since the start); with ``step_metrics=True`` also ``step_<metric>``, one
    entry per step. Epochs are numbered from the state's step counter: epoch e
    uses the key ``fold_in(key, e)``, e starting at ⌈state.step / steps per
    epoch⌉, so a run continued from a checkpoint equals one uninterrupted run
    (streamed data of unknown length need ``steps_per_epoch`` for that). Array
    data are checked once before training (equal lengths, finite values,
    ``check_data``: :func:`classifier`'s checks label ranges); after each epoch
    the training loss must be finite (``on_nonfinite``).

    Args:
      loss_fn: ``loss_fn(params, model_state, batch, key) -> (loss, (model_state, metrics))``.
      tx: the optimizer (its state is ``state.opt_state``).
      state: from :func:`init_train_state`.
      train_data: array data, or batches as above.
      key: PRNG key; epoch e uses ``fold_in(key, e)``.
      epochs: number of epochs (an int >= 0).
      batch_size: examples per step for array data (a remainder of one example
        joins the last batch, see :func:`make_epoch`); streamed iterables bring their own.
      val_data: validation data for ``eval_fn``: arrays, a list or re-iterable of
        batches, or a function ``() -> iterable``.
      eval_fn: ``eval_fn(params, model_state, batch) -> dict`` of metric means.
      progress: show a tqdm progress bar.
      drop_remainder: leave out the last ``n mod batch_size`` examples of each epoch.
      epoch_fn: a compiled in-memory epoch prepared ahead (e.g. ``jit_epoch(...).lower(...)``).
      on_nonfinite: ``"raise"`` (default: :class:`NonFiniteLossError`) or ``"warn"`` (once).
      donate: let the epochs consume the caller's ``state`` instead of a copy.
      mesh: optional ``jax.sharding.Mesh``: every mini-batch is split over
        ``batch_axis`` (array data replicated on every device; streamed chunks
        placed split over it when the devices divide the batch). Equals one
        device up to float rounding.
      sharding: with a mesh, the state's placement (:mod:`fnn.sharding`):
        ``None`` (the state's own), ``"replicated"``, ``"fsdp"`` or a rule.
      batch_axis: the mesh axis batches (and FSDP params) are split over.
      stream: stream array ``train_data`` from the host instead of moving it to the device.
      prefetch: streamed chunks kept ready on the device ahead of the step (>= 1).
      steps_per_call: streamed batches trained per compiled call (>= 1; each
        chunk and the ``prefetch`` queue hold that many batches on the device).
      steps_per_epoch: batches per epoch of streamed data, for continuing a run
        (needed when ``state.step > 0`` and the length is unknown).
      val_batch_size: evaluate array ``val_data`` in batches of this size (default: one call).
      eval_params: ``"params"``, or ``"ema"`` to evaluate the average an
        ``optimizers.ema`` link of ``tx`` keeps (``optimizers.averaged_params``).
      callbacks: :mod:`fnn.callbacks` (``LogEvery``, ``EarlyStopping``, ``Checkpoint``, …).
      step_metrics: record every step's metrics in ``history["step_<metric>"]``.

    Raises:
      NonFiniteLossError: an epoch's training loss was not finite (with ``on_nonfinite="raise"``).

    Example:
        >>> state, history = fnn.train.fit(loss_fn, tx, state, (x, y), key=key,
        ...                                epochs=30, batch_size=64)
        >>> state, history = fnn.train.fit(loss_fn, tx, state,
        ...     lambda epoch: my_batches(epoch), key=key, epochs=30)   # streamed
    """
    opt._base.check_optimizer("fit", "tx", tx)
    _check_key("fit", key)
    epochs = _check_int("fit", "epochs", epochs, 0)
    if on_nonfinite not in ("raise", "warn"):
        raise ValueError(f"fit: on_nonfinite must be 'raise' or 'warn'; got {on_nonfinite!r}.")
    for name, flag in (("progress", progress), ("donate", donate), ("stream", stream),
                       ("step_metrics", step_metrics)):
        if not isinstance(flag, bool):
            raise TypeError(f"fit: {name} must be True or False; got {flag!r}.")
    callbacks = _callbacks.check_callbacks("fit", callbacks)
    hooks = _callbacks.StepHooks(callbacks)
    if not (isinstance(eval_params, str) and eval_params in ("params", "ema")):
        raise ValueError(f"fit: eval_params must be 'params' or 'ema'; got {eval_params!r}.")
    if eval_params == "ema":
        if eval_fn is None:
            raise ValueError("fit: eval_params='ema' evaluates val_data; pass val_data and "
                             "eval_fn too.")
        _evaluate.eval_params("fit", state, "ema")  # a clear error if tx keeps no average
    if val_batch_size is not None:
        val_batch_size = _check_int("fit", "val_batch_size", val_batch_size, 1)
    streamed = stream or _stream.is_stream(train_data)
    steps = check_fit_inputs("fit", loss_fn, state, train_data, None if streamed else batch_size,
                             drop_remainder, val_data, eval_fn, streamed=streamed)
    if streamed:
        if epoch_fn is not None:
            raise ValueError("fit: epoch_fn is a compiled in-memory epoch; streamed train_data "
                             "are trained by fit's own streamed epoch.")
        source = _stream.Source("fit", "train_data", train_data, epochs, batch_size,
                                drop_remainder, stream)
        prefetch = _check_int("fit", "prefetch", prefetch, 1)
        steps_per_call = _check_int("fit", "steps_per_call", steps_per_call, 1)
        steps = source.steps_per_epoch
    if steps_per_epoch is not None:
        if steps is not None:
            raise ValueError(f"fit: steps_per_epoch is for streamed data of unknown length; "
                             f"this train_data has {steps} steps per epoch.")
        steps = _check_int("fit", "steps_per_epoch", steps_per_epoch, 1)
    if steps is None and int(state.step) > 0:
        raise ValueError(
            f"fit: the state has taken {int(state.step)} steps; to continue a run on streamed "
            "train_data fit must know which epoch comes next: pass steps_per_epoch= (batches "
            "per epoch).")
    start_epoch = 0 if steps is None else first_epoch(state, steps)
    if mesh is None:
        if sharding is not None:
            raise ValueError("fit: sharding= needs a mesh; pass mesh= too.")
        state = state if donate else _copy(state)
        placement = None
        if not streamed:
            train_data = jax.tree_util.tree_map(jnp.asarray, train_data)
    else:
        mesh = _sharding.auto_mesh("fit", mesh, batch_axis)
        if sharding is not None:
            _sharding.check_rule("fit", sharding)
        placement = _sharding.resolve("fit", state, mesh, sharding, batch_axis)
        if not streamed:
            train_data = _sharding.place(train_data, jax.tree_util.tree_map(
                lambda _: _sharding.replicated(mesh), train_data))
        # placing copies (the caller's state stays usable) unless donating
        state = jax.device_put(state, placement) if donate else _sharding.place(state, placement)
    done = int(state.step)  # steps taken, counted on the host (for callbacks' on_step)
    if streamed:
        epoch_fn = _stream.StreamEpoch(
            "fit", loss_fn, tx, steps_per_call=steps_per_call, prefetch_size=prefetch,
            check=_stream.batch_check("fit", "train_data", loss_fn, state),
            first_epoch=start_epoch, first_step=done, per_step=step_metrics,
            on_chunk=hooks or None, mesh=mesh, batch_axis=batch_axis, placement=placement)
        train_data = source
    elif epoch_fn is None:
        epoch_fn = jit_epoch(loss_fn, tx, batch_size, drop_remainder=drop_remainder, mesh=mesh,
                             batch_axis=batch_axis, sharding=placement, state=state,
                             step_metrics=step_metrics or bool(hooks))
    elif step_metrics or hooks:
        raise ValueError("fit: step_metrics and callbacks with on_step need fit to build the "
                         "epoch; leave out epoch_fn.")
    evaluator, val_check = None, None
    if eval_fn is not None:
        evaluator = _evaluate.Evaluator("fit", eval_fn, prefetch)
        if _stream.is_stream(val_data):
            shapes = jax.eval_shape(lambda: (state.unpacked_params(), state.model_state))
            val_check = _evaluate.batch_checker("fit", "val_data", eval_fn, *shapes)
        elif val_batch_size is None:
            val_data = jax.tree_util.tree_map(jnp.asarray, val_data)  # moved once, not per epoch
    history: dict[str, list] = {"time": []}
    bar = _progress(epochs, progress, description)
    warned = False
    start = time.perf_counter()

    def after_epoch(e: int, state: TrainState, metrics: Any) -> bool:
        nonlocal warned, done
        means, per_step = metrics if isinstance(metrics, tuple) else (metrics, None)
        row = {f"train_{k}": float(v) for k, v in means.items()}
        if evaluator is not None:
            params = _evaluate.eval_params("fit", state, eval_params)
            row.update({f"val_{k}": v for k, v in evaluator(
                params, state.model_state, val_data, val_batch_size, val_check).items()})
        for k, v in row.items():
            history.setdefault(k, []).append(v)
        history["time"].append(time.perf_counter() - start)
        if per_step is not None:
            host = {k: np.asarray(v) for k, v in per_step.items()}
            if step_metrics:
                for k, v in host.items():
                    history.setdefault(f"step_{k}", []).extend(v.tolist())
            if not streamed and hooks:  # streamed epochs call them as the chunks finish
                hooks(done, host)
        done += steps if not streamed else 0
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
        stops = [bool(c.on_epoch_end(e, state, history)) for c in callbacks
                 if callable(getattr(c, "on_epoch_end", None))]
        return any(stops)

    try:
        state = run_epochs(epoch_fn, state, train_data, key, start_epoch, epochs, after_epoch)
    finally:
        if bar is not None:
            bar.close()
    for c in callbacks:
        if callable(getattr(c, "on_train_end", None)):
            replaced = c.on_train_end(state, history)
            state = state if replaced is None else replaced
    return state, history


def steps_per_second(history: dict, steps_per_epoch: int) -> float:
    """Training steps per second after the first epoch (which includes compilation)."""
    times = history.get("time", [])
    if len(times) < 2:
        return float("nan")
    return steps_per_epoch * (len(times) - 1) / (times[-1] - times[0])
