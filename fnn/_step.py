"""The compiled pieces of training: the state, one step, one epoch (``lax.scan`` over batches).

:mod:`fnn.train` re-exports everything here; :func:`fnn.train.fit` and
:func:`fnn.tuning.parallel_fit` run these epochs (see ``fnn.train.run_epochs``).
Their versions on a mesh (the sharded step, the jitted epoch) are in ``fnn._mesh_step``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import optimizers as opt

from . import sharding as _sharding
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


PACK_MIN_LEAVES = 100
"""``init_train_state(packed=None)`` packs trees of at least this many leaves (see
:func:`packing_pays` for the measurement behind it)."""


def packing_pays(params: Any, tx: opt.Optimizer) -> bool:
    """Whether ``init_train_state(packed=None)`` packs ``params`` (off a mesh).

    Rule: pack when the tree has at least :data:`PACK_MIN_LEAVES` leaves and
    ``tx`` accepts packed params; otherwise keep the tree as it is. A train step
    pays XLA:CPU's per-leaf overhead once per leaf in the optimizer, while
    packing costs a slice per leaf in the forward pass and a write of each
    gradient into the flat buffer, which is about the same per leaf but
    proportional to the bytes: packing wins for many leaves and loses a little
    for a few large ones. Measured (``benchmarks/train_step_models.py``, Adam,
    batch 64, fnn packed / fnn unpacked, 2-core CPU): 784-512-512-10 MLP (6
    leaves) 1.65x slower packed; a 12-block residual MLP with LayerNorm (150
    leaves) packed vs unpacked within the noise of a loaded machine (see the
    README's Benchmarks section); the optimizer alone at 1000 leaves x 1k is
    ~20x faster packed (``benchmarks/run_all.py --only adam --case 1000x1k``).

    ``tx`` "accepts" packed params if ``tx.init`` and ``optimizers.step`` trace
    on them (abstractly, nothing is computed): optimizers that need one leaf per
    buffer (LAMB, LARS, ``scale_by_trust_ratio``) or masks / partitions that cut
    through a buffer raise there, and the tree is then kept unpacked, so the
    automatic choice never fails where ``packed=False`` works. A hand-written
    rule whose result depends on a leaf's shape (rather than raising on a
    :class:`optimizers.Packed`) is not detected: pass ``packed=False`` for it.

    Example:
        >>> fnn.train.packing_pays({"w": jnp.ones((784, 512)), "b": jnp.zeros(512)},
        ...                        optimizers.adam(1e-3))
        False
    """
    leaves = jax.tree_util.tree_leaves(params)
    if len(leaves) < PACK_MIN_LEAVES:
        return False
    try:
        packed = jax.eval_shape(opt.pack, params)

        def one_step(p):
            return opt.step(tx, p, tx.init(p), p)

        jax.eval_shape(one_step, packed)
    except Exception:  # noqa: BLE001 - any refusal of packed params means: do not pack
        return False
    return True


def init_train_state(params: Any, model_state: Any, tx: opt.Optimizer, *,
                     packed: bool | None = None, mesh: Any = None, sharding: Any = "replicated",
                     batch_axis: str = "data") -> TrainState:
    """The state before the first step: ``tx.init`` of the params, step 0.

    Given a ``mesh``, the state is placed on it (see :mod:`fnn.sharding`):
    ``sharding="replicated"`` copies everything to every device (data
    parallelism); ``sharding="fsdp"`` splits each large param over the mesh's
    ``batch_axis`` and creates every optimizer moment already split like its
    param (never whole on one device); model state and step are replicated.
    :func:`make_train_step`, :func:`fit` and :func:`make_epoch`'s jitted
    programs keep this placement from step to step.

    Args:
      params: the model's params pytree (floating-point arrays).
      model_state: the model's state (e.g. BatchNorm statistics), ``{}`` if none.
      tx: an optimizer.
      packed: keep params and optimizer state in one flat buffer per dtype
        (:func:`optimizers.pack`): the optimizer step then costs a few kernels
        however many leaves the model has. Results are unchanged. With a mesh
        the buffers are padded to a multiple of the batch axis's size.
        ``None`` (default) decides: off a mesh it packs when
        :func:`packing_pays` (≥ :data:`PACK_MIN_LEAVES` leaves and ``tx``
        accepts packed params, else unpacked; never an error ``packed=False``
        would not raise); on a mesh it does not pack (not measured there).
      mesh: optional ``jax.sharding.Mesh`` to place the state on.
      sharding: with a mesh: ``"replicated"`` (default), ``"fsdp"``, a function
        ``(path, shape) -> PartitionSpec`` or a pytree of ``PartitionSpec`` for
        the params (see :func:`fnn.sharding.param_specs`).
      batch_axis: the mesh axis batches (and FSDP params) are split over.

    Example:
        >>> state = fnn.train.init_train_state(params, model_state, optimizers.adam(1e-3))
        >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
        >>> state = fnn.train.init_train_state(params, model_state, optimizers.adam(1e-3),
        ...                                    mesh=mesh, sharding="fsdp")
    """
    opt._base.check_optimizer("init_train_state", "tx", tx)
    if packed is not None and not isinstance(packed, bool):
        raise TypeError(f"init_train_state: packed must be None (decide), True or False; "
                        f"got {packed!r}.")
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"init_train_state: params{jax.tree_util.keystr(path)} has dtype {dtype}; params "
                "must be floating-point arrays (gradients of integers are not defined)."
            )
    if mesh is None:
        if not (isinstance(sharding, str) and sharding == "replicated"):
            raise ValueError("init_train_state: sharding= places the state on a mesh; pass "
                             "mesh= too (e.g. jax.make_mesh((jax.device_count(),), ('data',))).")
        # the state owns its buffers: steps donate them, which must not delete the caller's arrays
        params, model_state = jax.tree_util.tree_map(jnp.array, (params, model_state))
        if packed is None:
            packed = packing_pays(params, tx)
        if packed:
            params = opt.pack(params)
        return TrainState(params, model_state, tx.init(params), jnp.zeros((), jnp.int32))
    mesh = _sharding.auto_mesh("init_train_state", mesh, batch_axis)
    _sharding.check_rule("init_train_state", sharding)
    if packed:  # None: not on a mesh (see packing_pays)
        params = opt.pack(params, multiple_of=mesh.shape[batch_axis])
    abstract = TrainState(params, model_state, jax.eval_shape(tx.init, params),
                          jax.ShapeDtypeStruct((), jnp.int32))
    placed = _sharding.state_shardings(abstract, mesh, sharding, axis=batch_axis,
                                       owner="init_train_state")
    params, model_state = _sharding.place((params, model_state),
                                          (placed.params, placed.model_state))
    with jax.set_mesh(mesh):  # moments are made where they live, never whole on one device
        opt_state = jax.jit(tx.init, out_shardings=placed.opt_state)(params)
    return TrainState(params, model_state, opt_state,
                      _sharding.place(jnp.zeros((), jnp.int32), placed.step))


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


def train_step_fn(loss_fn: LossFn, tx: opt.Optimizer, *, shardings: Any = None) -> Callable:
    """The un-jitted step ``(state, batch, key) -> (state, metrics)``; see :func:`make_train_step`.

    Use it to compose a step into your own programs (``lax.scan``, ``vmap``).
    ``shardings`` (a ``TrainState`` of ``NamedSharding``, as
    :func:`fnn.sharding.state_shardings` returns) constrains the gradients to
    the params' placement (a reduce-scatter under FSDP) and the new state to
    its placement, so that it stays put inside loops.
    """
    check_callable("train_step_fn", "loss_fn", loss_fn)
    opt._base.check_optimizer("train_step_fn", "tx", tx)
    checked = _checked_loss(loss_fn)

    def step(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, dict]:
        check_state("train step", state)
        packed = isinstance(state.params, opt.Packed)

        def objective(params, model_state):
            return checked(opt.unpack(params) if packed else params, model_state, batch, key)

        if packed and shardings is not None:
            # gradients of the unpacked leaves, packed by concatenation: each device cuts its
            # part of the split buffer (unpack's own VJP writes into a zero buffer, which the
            # partitioner can only do on the whole buffer, gathered)
            (loss, (model_state, metrics)), grads = jax.value_and_grad(checked, has_aux=True)(
                opt.unpack(state.params), state.model_state, batch, key)
            grads = opt.packing.pack_like(grads, state.params)
        else:
            (loss, (model_state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
                state.params, state.model_state)
        if shardings is not None:
            grads = jax.lax.with_sharding_constraint(grads, shardings.params)
        # the optimizer writes the params itself (one pass, in place, where it has kernels)
        params, opt_state = opt.step(tx, grads, state.opt_state, state.params)
        new = TrainState(params, model_state, opt_state, state.step + 1)
        if shardings is not None:
            new = jax.lax.with_sharding_constraint(new, shardings)
        return new, {"loss": loss, **metrics}

    return step


def make_train_step(loss_fn: LossFn, tx: opt.Optimizer, *, donate: bool = True,
                    mesh: Any = None, batch_axis: str = "data", sharding: Any = None) -> Callable:
    """One jit-compiled training step: loss, gradient, optimizer update, applied.

    ``step(state, batch, key) -> (new_state, metrics)`` with ``metrics`` the loss
    function's metrics plus ``"loss"``. The old state's buffers are donated (reused
    for the new state), so do not use ``state`` after the call.

    With a ``mesh`` the step runs on all its devices: each batch is split over
    ``batch_axis`` and the state keeps its placement, passed to ``jax.jit`` as
    explicit in- and out-shardings (so it is compiled once and every new state,
    optimizer moments included, lies where the old one did). The placement is
    the one the state was made with (``init_train_state(..., mesh=mesh,
    sharding=...)``: replicated or FSDP, see :mod:`fnn.sharding`), read from
    its params; a state not yet on the mesh is replicated. ``sharding=``
    chooses another placement (the state is moved at the first step). BatchNorm
    statistics are those of the whole batch and dropout masks do not depend on
    the number of devices, so the result equals single-device training up to
    float rounding.

    Args:
      loss_fn: ``loss_fn(params, model_state, batch, key) -> (loss, (model_state, metrics))``.
      tx: the optimizer.
      donate: donate the state's buffers (the default; faster, less memory).
      mesh: optional ``jax.sharding.Mesh`` to run on. Every batch must then hold
        a multiple of the number of devices along ``batch_axis``.
      batch_axis: the mesh axis the batch (and FSDP params) are split over.
      sharding: ``None`` (the state's own placement), ``"replicated"``, ``"fsdp"``, a
        function ``(path, shape) -> PartitionSpec`` or a pytree of ``PartitionSpec``.

    Example:
        >>> step = fnn.train.make_train_step(loss_fn, optimizers.adam(1e-3))
        >>> state, metrics = step(state, (x, y), jax.random.key(0))
        >>> state = fnn.train.init_train_state(params, model_state, tx, mesh=mesh, sharding="fsdp")
        >>> step = fnn.train.make_train_step(loss_fn, tx, mesh=mesh)   # keeps the FSDP layout
    """
    opt._base.check_optimizer("make_train_step", "tx", tx)
    check_callable("make_train_step", "loss_fn", loss_fn)
    if not isinstance(donate, bool):
        raise TypeError(f"make_train_step: donate must be True or False; got {donate!r}.")
    donate_argnums = (0,) if donate else ()
    if mesh is None:
        if sharding is not None:
            raise ValueError("make_train_step: sharding= needs a mesh; pass mesh= too.")
        return jax.jit(train_step_fn(loss_fn, tx), donate_argnums=donate_argnums)
    from ._mesh_step import sharded_train_step  # it builds on this module

    return sharded_train_step(loss_fn, tx, donate_argnums, mesh, batch_axis, sharding)


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
               drop_remainder: bool = False, mesh: Any = None, batch_axis: str = "data",
               sharding: Any = "replicated", step_metrics: bool = False) -> Callable:
    """One epoch as a single pure function ``epoch(state, data, key) -> (state, metrics)``.

    The examples are shuffled with ``key``, cut into mini-batches of
    ``batch_size`` and trained on with ``lax.scan`` (one compiled program per
    epoch, no Python between steps). Unless ``drop_remainder``, the last
    smaller batch is trained on too, so every example is seen once; a last
    batch of a single example is merged into the one before it (batch_size + 1
    examples), since BatchNorm cannot train on one example. Metrics are means
    over the epoch's examples. The function is pure: ``jax.jit`` it, or
    ``jax.vmap`` it over states to train many models at once.

    With a ``mesh``, every mini-batch is split over ``batch_axis`` and the
    state is held in the placement ``sharding`` gives (``"replicated"``,
    ``"fsdp"``, a rule as in :func:`init_train_state`, or a ``TrainState`` of
    ``NamedSharding`` from :func:`fnn.sharding.state_shardings`) throughout the
    epoch; :func:`jit_epoch` jits it with matching in- and out-shardings.

    With ``step_metrics=True`` the epoch returns ``(state, (metrics,
    per_step))``, ``per_step`` holding each metric of every step (in order).

    Example:
        >>> epoch = jax.jit(fnn.train.make_epoch(loss_fn, tx, 64), donate_argnums=0)
        >>> state, metrics = epoch(state, (x_train, y_train), jax.random.key(1))
    """
    batch_size = _check_int("make_epoch", "batch_size", batch_size, 1)
    for name, flag in (("drop_remainder", drop_remainder), ("step_metrics", step_metrics)):
        if not isinstance(flag, bool):
            raise TypeError(f"make_epoch: {name} must be True or False; got {flag!r}.")
    if mesh is not None:
        mesh = _sharding.auto_mesh("make_epoch", mesh, batch_axis)
        if not isinstance(sharding, TrainState):
            _sharding.check_rule("make_epoch", sharding)
        batch_sharding = _sharding.batch_sharding(mesh, batch_axis)
    elif not (isinstance(sharding, str) and sharding == "replicated"):
        raise ValueError("make_epoch: sharding= needs a mesh; pass mesh= too.")
    plain_step = train_step_fn(loss_fn, tx)

    def epoch(state: TrainState, data: Any, key: jax.Array) -> tuple[TrainState, dict]:
        check_state("epoch", state)
        _check_key("epoch", key)
        if mesh is None:
            step = plain_step
        else:
            placement = sharding if isinstance(sharding, TrainState) else \
                _sharding.state_shardings(state, mesh, sharding, axis=batch_axis, owner="epoch")
            state = jax.lax.with_sharding_constraint(state, placement)
            sharded = train_step_fn(loss_fn, tx, shardings=placement)

            def step(state, batch, key):
                return sharded(state, jax.lax.with_sharding_constraint(batch, batch_sharding), key)
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
        means = _mean_metrics(stacked, jnp.concatenate(weights))
        return state, ((means, stacked) if step_metrics else means)

    return epoch


def _mean_metrics(metrics: dict, weights: jax.Array) -> dict:
    total = jnp.sum(weights)
    return {k: jnp.sum(v * weights) / total for k, v in metrics.items()}
