"""The compiled pieces of training: the state, one step, one epoch (``lax.scan`` over batches).

:mod:`fnn.train` re-exports everything here; :func:`fnn.train.fit` and
:func:`fnn.tuning.parallel_fit` run these epochs (see ``fnn.train.run_epochs``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import optimizers as opt

from .data import _check_int, _check_key, _num_examples

LossFn = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, tuple[Any, dict]]]


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree.

    ``params`` may be a :class:`optimizers.Packed` (see ``init_train_state(packed=True)``);
    the loss function always receives the unpacked tree. ``step`` counts the
    optimizer steps taken; :func:`fnn.train.fit` derives from it the epoch to
    continue from, so a restored checkpoint resumes where it stopped.
    """

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array

    def unpacked_params(self) -> Any:
        """The params as the model sees them (unpacked if they are packed)."""
        return opt.unpack(self.params) if isinstance(self.params, opt.Packed) else self.params


TrainState.__module__ = "fnn.train"


def check_state(owner: str, state: Any) -> None:
    """Raises TypeError unless ``state`` is a :class:`TrainState`."""
    if not isinstance(state, TrainState):
        raise TypeError(f"{owner}: state must be a TrainState from fnn.train.init_train_state; "
                        f"got {type(state).__name__}.")


def check_callable(owner: str, name: str, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"{owner}: {name} must be a function; got {type(fn).__name__} {fn!r}.")


def init_train_state(params: Any, model_state: Any, tx: opt.Optimizer, *,
                     packed: bool = False) -> TrainState:
    """The state before the first step: ``tx.init`` of the params, step 0.

    Args:
      params: the model's params pytree (floating-point arrays).
      model_state: the model's state (e.g. BatchNorm statistics), ``{}`` if none.
      tx: an optimizer.
      packed: keep params and optimizer state in one flat buffer per dtype
        (:func:`optimizers.pack`): the optimizer step then costs a few kernels
        however many leaves the model has. Results are unchanged.

    Example:
        >>> state = fnn.train.init_train_state(params, model_state, optimizers.adam(1e-3))
    """
    opt._base.check_optimizer("init_train_state", "tx", tx)
    if not isinstance(packed, bool):
        raise TypeError(f"init_train_state: packed must be True or False; got {packed!r}.")
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"init_train_state: params{jax.tree_util.keystr(path)} has dtype {dtype}; params "
                "must be floating-point arrays (gradients of integers are not defined)."
            )
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
    check_callable("train_step_fn", "loss_fn", loss_fn)
    opt._base.check_optimizer("train_step_fn", "tx", tx)
    checked = _checked_loss(loss_fn)

    def step(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, dict]:
        check_state("train step", state)
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
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if not isinstance(mesh, Mesh):
        raise TypeError(f"make_train_step: mesh must be a jax.sharding.Mesh; got "
                        f"{type(mesh).__name__}.")
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
        sharded over ``batch_axis``, the state replicated. Every batch must then
        hold a multiple of the number of devices along ``batch_axis``.
      batch_axis: the mesh axis the batch is split over.

    Example:
        >>> step = fnn.train.make_train_step(loss_fn, optimizers.adam(1e-3))
        >>> state, metrics = step(state, (x, y), jax.random.key(0))
    """
    opt._base.check_optimizer("make_train_step", "tx", tx)
    if not isinstance(donate, bool):
        raise TypeError(f"make_train_step: donate must be True or False; got {donate!r}.")
    step = train_step_fn(loss_fn, tx)
    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    replicated, sharded = _shardings(mesh, batch_axis)
    jitted = jax.jit(step, donate_argnums=donate_argnums,
                     in_shardings=(replicated, sharded, replicated),
                     out_shardings=(replicated, replicated))
    devices = mesh.shape[batch_axis]

    def sharded_step(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, dict]:
        n = _num_examples("train step", batch, "batch")
        if n % devices:
            raise ValueError(
                f"train step: a batch of {n} examples cannot be split evenly over the "
                f"{devices} devices of mesh axis {batch_axis!r}; use a batch size that is a "
                f"multiple of {devices}."
            )
        return jitted(state, batch, key)

    sharded_step.lower = jitted.lower
    return sharded_step


def epoch_layout(owner: str, n: int, batch_size: int, drop_remainder: bool) -> tuple[int, int]:
    """``(full, last)``: ``full`` batches of ``batch_size``, then one batch of ``last`` (0: none).

    Unless ``drop_remainder``, every example is trained on once. A remainder of
    a single example (n mod batch_size = 1) is not trained on alone: it joins
    the batch before it, which then holds batch_size + 1 examples, because some
    layers (BatchNorm) cannot train on one example. ``full + (last > 0)`` is the
    number of steps per epoch.
    """
    full, rest = divmod(n, batch_size)
    if drop_remainder:
        rest = 0
    elif rest == 1 and full:
        full, rest = full - 1, batch_size + 1
    if full == 0 and rest == 0:
        raise ValueError(f"{owner}: {n} examples make no batch of {batch_size}"
                         f"{' (drop_remainder=True)' if drop_remainder else ''}.")
    return full, rest


def make_epoch(loss_fn: LossFn, tx: opt.Optimizer, batch_size: int, *,
               drop_remainder: bool = False) -> Callable:
    """One epoch as a single pure function ``epoch(state, data, key) -> (state, metrics)``.

    The examples are shuffled with ``key``, cut into mini-batches of
    ``batch_size`` and trained on with ``lax.scan`` (one compiled program per
    epoch, no Python between steps). Unless ``drop_remainder``, the last
    smaller batch is trained on too, so every example is seen once; a last
    batch of a single example is merged into the one before it (batch_size + 1
    examples), since BatchNorm cannot train on one example. Metrics are means
    over the epoch's examples. The function is pure: ``jax.jit`` it, or
    ``jax.vmap`` it over states to train many models at once.

    Example:
        >>> epoch = jax.jit(fnn.train.make_epoch(loss_fn, tx, 64), donate_argnums=0)
        >>> state, metrics = epoch(state, (x_train, y_train), jax.random.key(1))
    """
    batch_size = _check_int("make_epoch", "batch_size", batch_size, 1)
    if not isinstance(drop_remainder, bool):
        raise TypeError(f"make_epoch: drop_remainder must be True or False; got "
                        f"{drop_remainder!r}.")
    step = train_step_fn(loss_fn, tx)

    def epoch(state: TrainState, data: Any, key: jax.Array) -> tuple[TrainState, dict]:
        check_state("epoch", state)
        _check_key("epoch", key)
        n = _num_examples("epoch", data)
        full, last = epoch_layout("epoch", n, batch_size, drop_remainder)
        data = jax.tree_util.tree_map(jnp.asarray, data)  # NumPy data cannot take a traced index
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
        if last:
            state, final = body(state, (jnp.asarray(full), order[full * batch_size:]))
            metrics.append(jax.tree_util.tree_map(lambda x: x[None], final))
            weights.append(jnp.full((1,), last, jnp.float32))
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *metrics)
        return state, _mean_metrics(stacked, jnp.concatenate(weights))

    return epoch


def _mean_metrics(metrics: dict, weights: jax.Array) -> dict:
    total = jnp.sum(weights)
    return {k: jnp.sum(v * weights) / total for k, v in metrics.items()}
