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

Everything is deterministic given the key. Given a ``jax.sharding.Mesh``, the
step runs data-parallel: the batch is split over the mesh's ``batch_axis`` and
params, model state and optimizer state are replicated on every device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import optimizers as opt

from .data import _check_key, _num_examples

LossFn = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, tuple[Any, dict]]]


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree.

    ``params`` may be a :class:`optimizers.Packed` (see ``init_train_state(packed=True)``);
    the loss function always receives the unpacked tree.
    """

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array

    def unpacked_params(self) -> Any:
        """The params as the model sees them (unpacked if they are packed)."""
        return opt.unpack(self.params) if isinstance(self.params, opt.Packed) else self.params


def init_train_state(params: Any, model_state: Any, tx: opt.Optimizer, *,
                     packed: bool = False) -> TrainState:
    """The state before the first step: ``tx.init`` of the params, step 0.

    Args:
      params: the model's params pytree.
      model_state: the model's state (e.g. BatchNorm statistics), ``{}`` if none.
      tx: an optimizer.
      packed: keep params and optimizer state in one flat buffer per dtype
        (:func:`optimizers.pack`): the optimizer step then costs a few kernels
        however many leaves the model has. Results are unchanged.

    Example:
        >>> state = fnn.train.init_train_state(params, model_state, optimizers.adam(1e-3))
    """
    opt._base.check_optimizer("init_train_state", "tx", tx)
    # the state owns its buffers: steps donate them, which must not delete the caller's arrays
    params, model_state = jax.tree_util.tree_map(jnp.array, (params, model_state))
    if packed:
        params = opt.pack(params)
    return TrainState(params, model_state, tx.init(params), jnp.zeros((), jnp.int32))


def _checked_loss(loss_fn: LossFn) -> Callable:
    def wrapped(params, model_state, batch, key):
        out = loss_fn(params, model_state, batch, key)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple)
                and len(out[1]) == 2 and isinstance(out[1][1], dict)):
            raise TypeError(
                "the loss function must return (loss, (new_model_state, metrics)) with metrics a "
                f"dict; got {type(out).__name__} {jax.tree_util.tree_structure(out)}."
            )
        loss = out[0]
        if jnp.shape(loss) != ():
            raise TypeError(f"the loss must be a scalar; got shape {jnp.shape(loss)}.")
        return out
    return wrapped


def train_step_fn(loss_fn: LossFn, tx: opt.Optimizer) -> Callable:
    """The un-jitted step ``(state, batch, key) -> (state, metrics)``; see :func:`make_train_step`.

    Use it to compose a step into your own programs (``lax.scan``, ``vmap``).
    """
    checked = _checked_loss(loss_fn)

    def step(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, dict]:
        packed = isinstance(state.params, opt.Packed)

        def objective(params, model_state):
            return checked(opt.unpack(params) if packed else params, model_state, batch, key)

        (loss, (model_state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, state.model_state)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = opt.apply_updates(state.params, updates)
        return TrainState(params, model_state, opt_state, state.step + 1), {"loss": loss, **metrics}

    return step


def _shardings(mesh: Any, batch_axis: str):
    from jax.sharding import NamedSharding, PartitionSpec

    if batch_axis not in mesh.axis_names:
        raise ValueError(
            f"batch_axis {batch_axis!r} is not an axis of the mesh; its axes are {mesh.axis_names}."
        )
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(batch_axis))


def make_train_step(loss_fn: LossFn, tx: opt.Optimizer, *, donate: bool = True,
                    mesh: Any = None, batch_axis: str = "data") -> Callable:
    """One jit-compiled training step: loss, gradient, optimizer update, applied.

    ``step(state, batch, key) -> (new_state, metrics)`` with ``metrics`` the loss
    function's metrics plus ``"loss"``. The old state's buffers are donated (reused
    for the new state), so do not use ``state`` after the call.

    Args:
      loss_fn: ``loss_fn(params, model_state, batch, key) -> (loss, (model_state, metrics))``.
      tx: the optimizer.
      donate: donate the state's buffers (the default; faster, less memory).
      mesh: optional ``jax.sharding.Mesh`` to run data-parallel: the batch is
        sharded over ``batch_axis``, the state replicated.
      batch_axis: the mesh axis the batch is split over.

    Example:
        >>> step = fnn.train.make_train_step(loss_fn, optimizers.adam(1e-3))
        >>> state, metrics = step(state, (x, y), jax.random.key(0))
    """
    opt._base.check_optimizer("make_train_step", "tx", tx)
    step = train_step_fn(loss_fn, tx)
    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    replicated, sharded = _shardings(mesh, batch_axis)
    return jax.jit(step, donate_argnums=donate_argnums,
                   in_shardings=(replicated, sharded, replicated),
                   out_shardings=(replicated, replicated))


def _mean_metrics(metrics: dict, weights: jax.Array) -> dict:
    total = jnp.sum(weights)
    return {k: jnp.sum(v * weights) / total for k, v in metrics.items()}


def make_epoch(loss_fn: LossFn, tx: opt.Optimizer, batch_size: int, *,
               drop_remainder: bool = False) -> Callable:
    """One epoch as a single pure function ``epoch(state, data, key) -> (state, metrics)``.

    The examples are shuffled with ``key``, cut into mini-batches of
    ``batch_size`` and trained on with ``lax.scan`` (one compiled program per
    epoch, no Python between steps). Unless ``drop_remainder``, the last
    smaller batch is trained on too, so every example is seen once. Metrics are
    means over the epoch's examples. The function is pure: ``jax.jit`` it, or
    ``jax.vmap`` it over states to train many models at once.

    Example:
        >>> epoch = jax.jit(fnn.train.make_epoch(loss_fn, tx, 64), donate_argnums=0)
        >>> state, metrics = epoch(state, (x_train, y_train), jax.random.key(1))
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"make_epoch: batch_size must be an int >= 1; got {batch_size!r}.")
    step = train_step_fn(loss_fn, tx)

    def epoch(state: TrainState, data: Any, key: jax.Array) -> tuple[TrainState, dict]:
        n = _num_examples("epoch", data)
        full, rest = divmod(n, batch_size)
        if full == 0 and (drop_remainder or rest == 0):
            raise ValueError(f"epoch: {n} examples make no batch of {batch_size}.")
        shuffle_key, step_key = jax.random.split(key)
        order = jax.random.permutation(shuffle_key, n)

        def body(state, inputs):
            i, index = inputs
            batch = jax.tree_util.tree_map(lambda x: x[index], data)
            return step(state, batch, jax.random.fold_in(step_key, i))

        metrics, weights = [], []
        if full:
            rows = order[:full * batch_size].reshape(full, batch_size)
            state, scanned = jax.lax.scan(body, state, (jnp.arange(full), rows))
            metrics.append(scanned)
            weights.append(jnp.full((full,), batch_size, jnp.float32))
        if rest and not drop_remainder:
            state, last = body(state, (jnp.asarray(full), order[full * batch_size:]))
            metrics.append(jax.tree_util.tree_map(lambda x: x[None], last))
            weights.append(jnp.full((1,), rest, jnp.float32))
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *metrics)
        return state, _mean_metrics(stacked, jnp.concatenate(weights))

    return epoch


def evaluate(eval_fn: Callable[[Any, Any, Any], dict], state: TrainState, data: Any,
             batch_size: int | None = None) -> dict:
    """Metrics of ``eval_fn(params, model_state, batch) -> dict`` over ``data``.

    With ``batch_size``, the data are evaluated in batches and the metrics
    averaged weighted by batch size (``eval_fn`` must return per-batch means).

    Example:
        >>> fnn.train.evaluate(eval_fn, state, (x_val, y_val))["accuracy"]
    """
    params = state.unpacked_params()
    n = _num_examples("evaluate", data)
    size = n if batch_size is None else batch_size
    totals: dict[str, float] = {}
    for start in range(0, n, size):
        batch = jax.tree_util.tree_map(lambda x, i=start: x[i:i + size], data)
        count = _num_examples("evaluate", batch)
        for k, v in eval_fn(params, state.model_state, batch).items():
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


def fit(loss_fn: LossFn, tx: opt.Optimizer, state: TrainState, train_data: Any, *,
        key: jax.Array, epochs: int, batch_size: int, val_data: Any = None,
        eval_fn: Callable | None = None, progress: bool = True, description: str = "train",
        drop_remainder: bool = False, epoch_fn: Callable | None = None,
        ) -> tuple[TrainState, dict]:
    """Trains for ``epochs`` epochs; returns the final state and a history of metrics.

    Each epoch is one compiled program (:func:`make_epoch`) that donates the
    state. ``history`` holds per-epoch lists: ``train_<metric>`` (means over the
    epoch), ``val_<metric>`` when ``val_data`` and ``eval_fn`` are given, and
    ``time`` (seconds since the start, compilation included).

    Args:
      loss_fn: ``loss_fn(params, model_state, batch, key) -> (loss, (model_state, metrics))``.
      tx: the optimizer (its state is ``state.opt_state``).
      state: from :func:`init_train_state`.
      train_data: an array or pytree of arrays with a shared first axis (kept on device).
      key: PRNG key; epoch e uses ``fold_in(key, e)`` (deterministic given the key).
      epochs: number of epochs.
      batch_size: mini-batch size.
      val_data: optional validation data for ``eval_fn``.
      eval_fn: ``eval_fn(params, model_state, batch) -> dict`` of metric means.
      progress: show a tqdm progress bar.
      epoch_fn: the compiled epoch to run, e.g. ``jax.jit(make_epoch(...)).lower(...).compile()``
        prepared ahead (in another thread, while something else trains); default: built here.

    Example:
        >>> state, history = fnn.train.fit(loss_fn, tx, state, (x, y), key=key,
        ...                                epochs=30, batch_size=64)
    """
    _check_key("fit", key)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit: epochs must be an int >= 0; got {epochs!r}.")
    if epoch_fn is None:
        epoch_fn = jax.jit(make_epoch(loss_fn, tx, batch_size, drop_remainder=drop_remainder),
                           donate_argnums=(0,))
    evaluate_fn = jax.jit(eval_fn) if eval_fn is not None else None
    train_data = jax.tree_util.tree_map(jnp.asarray, train_data)
    history: dict[str, list] = {"time": []}
    bar = _progress(epochs, progress, description)
    start = time.perf_counter()
    for e in range(epochs):
        state, metrics = epoch_fn(state, train_data, jax.random.fold_in(key, e))
        row = {f"train_{k}": float(v) for k, v in metrics.items()}
        if evaluate_fn is not None and val_data is not None:
            row.update({f"val_{k}": float(v) for k, v in
                        evaluate_fn(state.unpacked_params(), state.model_state, val_data).items()})
        for k, v in row.items():
            history.setdefault(k, []).append(v)
        history["time"].append(time.perf_counter() - start)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()})
    if bar is not None:
        bar.close()
    return state, history


def classifier(model: Any, *, l2: float = 0.0) -> tuple[LossFn, Callable]:
    """Loss and evaluation functions for a classifier built from fnn layers.

    loss = softmax cross-entropy(model(x), y) + l2 · Σw² (weights only, see
    ``fnn.losses.l2_penalty``); metrics: accuracy. The evaluation function runs
    the model in evaluation mode (running BatchNorm statistics, no dropout).

    Example:
        >>> loss_fn, eval_fn = fnn.train.classifier(model)
        >>> state, history = fnn.train.fit(loss_fn, tx, state, (x, y), key=key, epochs=10,
        ...                                batch_size=64, val_data=(xv, yv), eval_fn=eval_fn)
    """
    from . import losses

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

    return loss_fn, eval_fn


def steps_per_second(history: dict, steps_per_epoch: int) -> float:
    """Training steps per second after the first epoch (which includes compilation)."""
    times = history.get("time", [])
    if len(times) < 2:
        return float("nan")
    return steps_per_epoch * (len(times) - 1) / (times[-1] - times[0])
