"""The compiled training programs on a mesh: the sharded step and the jitted epoch.

Both keep the state's placement (:mod:`fnn.sharding`) from call to call by
passing it to ``jax.jit`` as in- and out-shardings, run on the mesh with
``Auto`` axes, and relabel arrays made on the user's mesh (``Explicit`` axes,
``jax.make_mesh``'s default) without copying them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

import optimizers as opt

from . import sharding as _sharding
from ._step import LossFn, TrainState, check_state, make_epoch, train_step_fn
from .data import _num_examples


def sharded_train_step(loss_fn: LossFn, tx: opt.Optimizer, donate_argnums: tuple,
                       mesh: Any, batch_axis: str, sharding: Any) -> Callable:
    """:func:`fnn.train.make_train_step` with a mesh (its arguments checked there)."""
    mesh = _sharding.auto_mesh("make_train_step", mesh, batch_axis)
    if sharding is not None:
        _sharding.check_rule("make_train_step", sharding)
    batch_sharding = _sharding.batch_sharding(mesh, batch_axis)
    replicated = _sharding.replicated(mesh)
    devices = mesh.shape[batch_axis]
    programs: dict = {}  # placement of the state -> jitted step
    seen: dict = {}  # signature of an incoming state -> (jitted step, placement, leaves to move)

    def program(state: TrainState) -> tuple[Callable, TrainState]:
        leaves, treedef = jax.tree_util.tree_flatten(state)
        signature = (treedef, tuple((jnp.shape(x), jnp.result_type(x), getattr(x, "sharding", None))
                                    for x in leaves))
        if signature not in seen:
            target = _sharding.resolve("make_train_step", state, mesh, sharding, batch_axis)
            flat = tuple(jax.tree_util.tree_leaves(target))
            if (treedef, flat) not in programs:
                programs[treedef, flat] = jax.jit(
                    train_step_fn(loss_fn, tx, shardings=target), donate_argnums=donate_argnums,
                    in_shardings=(target, batch_sharding, replicated),
                    out_shardings=(target, replicated))
            moves = any(getattr(x, "sharding", None) != t for x, t in zip(leaves, flat))
            seen[signature] = (programs[treedef, flat], target, moves)
        jitted, target, moves = seen[signature]
        if moves:  # first step of a state placed otherwise (e.g. made without a mesh)
            state = jax.device_put(state, target)
        return jitted, state

    def sharded_step(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, dict]:
        check_state("train step", state)
        n = _num_examples("train step", batch, "batch")
        if n % devices:
            raise ValueError(
                f"train step: a batch of {n} examples cannot be split evenly over the "
                f"{devices} devices of mesh axis {batch_axis!r}; use a batch size that is a "
                f"multiple of {devices}."
            )
        jitted, state = program(state)
        batch, key = _onto(batch, batch_sharding), _onto(key, replicated)
        with jax.set_mesh(mesh):
            return jitted(state, batch, key)

    def lower(state: TrainState, batch: Any, key: jax.Array) -> Any:
        jitted, state = program(state)
        batch, key = _onto(batch, batch_sharding), _onto(key, replicated)
        with jax.set_mesh(mesh):
            return jitted.lower(state, batch, key)

    sharded_step.lower = lower
    sharded_step.programs = programs
    return sharded_step


def _onto(tree: Any, sharding: Any) -> Any:
    """Arrays of ``tree`` placed otherwise moved onto ``sharding``: e.g. a batch made on the
    user's mesh with ``Explicit`` axes (``jax.make_mesh``'s default) is relabelled, with no
    copy, for the step's ``Auto`` mesh, whose trace it could not enter otherwise."""
    def onto(x):
        named = isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding)
        return jax.device_put(x, sharding) if named and x.sharding != sharding else x

    return jax.tree_util.tree_map(onto, tree)


def jit_epoch(loss_fn: LossFn, tx: opt.Optimizer, batch_size: int, *,
              drop_remainder: bool = False, mesh: Any = None, batch_axis: str = "data",
              sharding: Any = None, state: Any = None, donate: bool = True,
              step_metrics: bool = False) -> Callable:
    """:func:`make_epoch`, jit-compiled, donating the state; on a ``mesh``, with the placement kept.

    Without a mesh this is ``jax.jit(make_epoch(...), donate_argnums=0)``. With
    one, the state's placement (``sharding`` as in :func:`make_train_step`:
    ``None`` reads it from ``state``'s params, a state not on the mesh, or one
    of shapes alone from ``jax.eval_shape``, is replicated) is passed as in-
    and out-shardings, the data are replicated and every mini-batch is split
    over ``batch_axis``. ``state`` (arrays or ``jax.ShapeDtypeStruct`` s) is
    needed with a mesh; ``lower`` accepts shapes alone, for compiling ahead.
    ``step_metrics`` as in :func:`make_epoch`.

    Example:
        >>> epoch = fnn.train.jit_epoch(loss_fn, tx, 64, mesh=mesh, state=state)
        >>> state, metrics = epoch(state, (x, y), jax.random.key(1))
    """
    if not isinstance(donate, bool):
        raise TypeError(f"jit_epoch: donate must be True or False; got {donate!r}.")
    donate_argnums = (0,) if donate else ()
    if mesh is None:
        if sharding is not None:
            raise ValueError("jit_epoch: sharding= needs a mesh; pass mesh= too.")
        return jax.jit(make_epoch(loss_fn, tx, batch_size, drop_remainder=drop_remainder,
                                  step_metrics=step_metrics), donate_argnums=donate_argnums)
    mesh = _sharding.auto_mesh("jit_epoch", mesh, batch_axis)
    if state is None:
        raise ValueError("jit_epoch: with a mesh, pass the state (or jax.eval_shape of it) as "
                         "state=, from which the placement is derived.")
    check_state("jit_epoch", state)
    placement = sharding if isinstance(sharding, TrainState) else \
        _sharding.resolve("jit_epoch", state, mesh, sharding, batch_axis)
    replicated = _sharding.replicated(mesh)
    jitted = jax.jit(make_epoch(loss_fn, tx, batch_size, drop_remainder=drop_remainder,
                                mesh=mesh, batch_axis=batch_axis, sharding=placement,
                                step_metrics=step_metrics),
                     in_shardings=(placement, replicated, replicated),
                     out_shardings=(placement, replicated), donate_argnums=donate_argnums)

    def epoch(state: TrainState, data: Any, key: jax.Array) -> tuple[TrainState, dict]:
        data, key = _onto(data, replicated), _onto(key, replicated)
        with jax.set_mesh(mesh):
            return jitted(state, data, key)

    def lower(state: Any, data: Any, key: Any) -> Any:
        data, key = _onto(data, replicated), _onto(key, replicated)
        with jax.set_mesh(mesh):
            return jitted.lower(state, data, key)

    epoch.lower, epoch.placement, epoch.jitted = lower, placement, jitted
    return epoch
