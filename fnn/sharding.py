"""Where training state lives on a mesh: replicated data parallelism or FSDP.

Given a ``jax.sharding.Mesh``, training splits each batch over the mesh's batch
axis (``"data"`` by default) and places the state by one choice, ``sharding``:

* ``"replicated"`` (data parallelism): every device holds all params, model
  state and optimizer state; gradients are summed over devices (all-reduce).
* ``"fsdp"`` (fully sharded data parallelism): every large param leaf is split
  over the batch axis, and so are its gradient and its optimizer moments; a
  device keeps 1/N of them. The forward and backward passes gather a param
  where they use it (all-gather); gradients are reduce-scattered. Per-device
  memory of params and optimizer state falls to ≈ 1/N.

The FSDP rule, :func:`fsdp_spec`: a leaf with fewer than ``min_size`` elements
(:data:`MIN_SIZE` = 1024 by default: biases, norms' scales) is replicated; any
other leaf is split along its largest dimension that the axis size divides
(among equal ones the leading, so that a shard is one contiguous block of
memory), and replicated when none does. Override it with a function
``(path, shape) -> PartitionSpec`` or a pytree of ``PartitionSpec`` (a prefix
of the params tree).

The rest follows the params, by tree structure, never by guessing from names:

* optimizer state: optimizer states are NamedTuples (nested in chains and
  wrappers) whose moment fields mirror the params tree (``mu``, ``nu``,
  ``velocity``, an accumulator's ``grad_sum``; under ``optimizers.masked`` a
  subset of it). Every leaf of such a subtree is placed like the param at the
  same path, if it has that param's shape; everything else (step counts,
  hyperparameters) is replicated;
* model state (BatchNorm's running statistics) and the step counter: replicated.
  Under ``jit`` the batch statistics are those of the whole (global) batch, so
  sharded training computes what one device would.

Example:
    >>> mesh = jax.make_mesh((8,), ("data",))
    >>> state = fnn.train.init_train_state(params, model_state, tx, mesh=mesh, sharding="fsdp")
    >>> fnn.sharding.bytes_per_device(state.opt_state)   # ≈ 1/8 of the replicated bytes
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

import optimizers as opt

MIN_SIZE = 1024  # elements: smaller leaves are replicated by the FSDP rule
MODES = ("replicated", "fsdp")

Rule = Any  # "replicated" | "fsdp" | (path, shape) -> PartitionSpec | pytree of PartitionSpec


# ------------------------------------------------------------------ checks


def check_mesh(owner: str, mesh: Any, axis: str) -> None:
    """Raises unless ``mesh`` is a Mesh with an axis named ``axis``."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{owner}: mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((8,), "
                        f"('data',))); got {type(mesh).__name__}.")
    if axis not in mesh.axis_names:
        raise ValueError(f"{owner}: batch_axis {axis!r} is not an axis of the mesh; its axes are "
                         f"{mesh.axis_names}. Pass batch_axis= one of them.")


def auto_mesh(owner: str, mesh: Any, axis: str) -> Mesh:
    """``mesh`` checked, with every axis of type ``Auto``: the step's shardings are then
    propagated by the compiler and the loss function needs no sharding annotations,
    whether the mesh was made with ``Explicit`` axes (``jax.make_mesh``'s default) or not.
    Arrays placed on either mesh are interchangeable (same devices, same layout)."""
    check_mesh(owner, mesh, axis)
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def check_rule(owner: str, sharding: Any) -> None:
    """Raises unless ``sharding`` is a mode name, a function or a pytree of PartitionSpecs."""
    if isinstance(sharding, str):
        if sharding not in MODES:
            raise ValueError(f"{owner}: sharding must be 'replicated', 'fsdp', a function "
                             f"(path, shape) -> PartitionSpec or a pytree of PartitionSpec; got "
                             f"{sharding!r}.")
        return
    if callable(sharding):
        return
    leaves = jax.tree_util.tree_leaves(sharding, is_leaf=lambda x: isinstance(x, PartitionSpec))
    if not leaves or not all(isinstance(x, PartitionSpec) for x in leaves):
        raise TypeError(f"{owner}: sharding must be 'replicated', 'fsdp', a function (path, "
                        f"shape) -> PartitionSpec or a pytree of PartitionSpec; got "
                        f"{type(sharding).__name__} {sharding!r}.")


def _check_spec(owner: str, where: str, spec: Any, shape: tuple, mesh: Mesh) -> PartitionSpec:
    if not isinstance(spec, PartitionSpec):
        raise TypeError(f"{owner}: the sharding rule returned {spec!r} for {where} (shape "
                        f"{shape}); it must return a jax.sharding.PartitionSpec, e.g. "
                        f"PartitionSpec() to replicate.")
    if len(spec) > len(shape):
        raise ValueError(f"{owner}: PartitionSpec {spec} for {where} names {len(spec)} "
                         f"dimensions, but the leaf has shape {shape}.")
    for dim, entry in enumerate(spec):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        unknown = [n for n in names if n not in mesh.axis_names]
        if unknown:
            raise ValueError(f"{owner}: PartitionSpec {spec} for {where} names mesh axis "
                             f"{unknown[0]!r}; the mesh's axes are {mesh.axis_names}.")
        parts = math.prod(mesh.shape[n] for n in names)
        if shape[dim] % parts:
            raise ValueError(
                f"{owner}: PartitionSpec {spec} splits dimension {dim} of {where} (shape "
                f"{shape}) into {parts} parts, but {shape[dim]} is not a multiple of {parts}. "
                "Split a dimension that divides evenly, or replicate it (None).")
    return spec


# ------------------------------------------------------------------ params


def fsdp_spec(shape: tuple[int, ...], axis_size: int, axis: str = "data", *,
              min_size: int = MIN_SIZE) -> PartitionSpec:
    """The default FSDP placement of one leaf of ``shape`` over a mesh axis of ``axis_size``.

    Replicated (``PartitionSpec()``) when the leaf has fewer than ``min_size``
    elements or no dimension is a multiple of ``axis_size``; otherwise split
    along the largest dimension that is (the leading one among equals).

    Example:
        >>> fsdp_spec((512, 1024), 8)      # PartitionSpec(None, 'data')
        >>> fsdp_spec((1024,), 8)          # PartitionSpec('data',)
        >>> fsdp_spec((10,), 8)            # PartitionSpec(): small, replicated
    """
    if math.prod(shape) < min_size:
        return PartitionSpec()
    dims = [d for d, n in enumerate(shape) if n % axis_size == 0 and n >= axis_size]
    if not dims:
        return PartitionSpec()
    best = max(dims, key=lambda d: (shape[d], -d))
    return PartitionSpec(*([None] * best), axis)


def param_specs(params: Any, mesh: Mesh, sharding: Rule = "fsdp", *, axis: str = "data",
                owner: str = "param_specs") -> Any:
    """The ``PartitionSpec`` of every param leaf under ``sharding`` (see the module docstring).

    Works on arrays and on shapes alone (``jax.ShapeDtypeStruct``, tracers).

    Example:
        >>> rule = lambda path, shape: PartitionSpec() if "embed" in jax.tree_util.keystr(path) \\
        ...     else fnn.sharding.fsdp_spec(shape, 8)
        >>> specs = fnn.sharding.param_specs(params, mesh, rule)
    """
    check_mesh(owner, mesh, axis)
    check_rule(owner, sharding)
    if isinstance(sharding, str):
        if sharding == "replicated":
            return jax.tree_util.tree_map(lambda _: PartitionSpec(), params)
        size = mesh.shape[axis]
        if isinstance(params, opt.Packed):
            _check_packed(owner, params, size)
        sharding = lambda path, shape: fsdp_spec(shape, size, axis)  # noqa: E731
    elif not callable(sharding):
        sharding = _prefix_rule(owner, sharding, params)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: _check_spec(owner, f"params{jax.tree_util.keystr(path)}",
                                    sharding(path, tuple(np.shape(x))), tuple(np.shape(x)), mesh),
        params)


def _check_packed(owner: str, params: opt.Packed, size: int) -> None:
    for path, buffer in jax.tree_util.tree_leaves_with_path(params):
        n = int(np.size(buffer))
        if n >= MIN_SIZE and n % size:
            name = params.layout.sizes[path[0].key][0] if path else "?"
            raise ValueError(
                f"{owner}: packed buffer {name!r} holds {n} elements, which do not split evenly "
                f"over the {size} devices of the batch axis. Make the state with "
                f"fnn.train.init_train_state(..., packed=True, mesh=mesh), which pads the "
                f"buffers, or pack with optimizers.pack(params, multiple_of={size}).")


def _prefix_rule(owner: str, specs: Any, params: Any) -> Callable:
    """A (path, shape) rule from a pytree of PartitionSpecs that is a prefix of ``params``."""
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    try:
        full = jax.tree_util.tree_map(lambda spec, sub: jax.tree_util.tree_map(lambda _: spec, sub),
                                      specs, params, is_leaf=is_spec)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{owner}: the pytree of PartitionSpecs must have the structure of the params (or "
            f"be a prefix of it); got {jax.tree_util.tree_structure(specs, is_leaf=is_spec)}, "
            f"params are {jax.tree_util.tree_structure(params)}. ({error})") from None
    by_path = {tuple(p): s for p, s in jax.tree_util.tree_leaves_with_path(full, is_leaf=is_spec)}
    return lambda path, shape: by_path[tuple(path)]


def param_shardings(params: Any, mesh: Mesh, sharding: Rule = "fsdp", *,
                    axis: str = "data", owner: str = "param_shardings") -> Any:
    """:func:`param_specs` as ``NamedSharding`` s on ``mesh``."""
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s),
                                  param_specs(params, mesh, sharding, axis=axis, owner=owner),
                                  is_leaf=lambda x: isinstance(x, PartitionSpec))


# ------------------------------------------------------------------ optimizer state


def opt_state_shardings(opt_state: Any, params: Any, shardings: Any, mesh: Mesh) -> Any:
    """Shardings of an optimizer state: moments like their params, the rest replicated.

    A subtree of ``opt_state`` whose every leaf sits at a param's path (relative to
    the subtree) with that param's shape mirrors the params (a moment tree, or
    the subset a ``masked`` optimizer keeps): its leaves get their params'
    shardings. Other leaves (counts, hyperparameters, anything shaped otherwise)
    are replicated. Works on arrays and on shapes alone.

    Example:
        >>> shardings = fnn.sharding.opt_state_shardings(
        ...     jax.eval_shape(tx.init, params), params, param_shardings, mesh)
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    by_path = {tuple(path): (tuple(np.shape(x)), s) for (path, x), s in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(shardings))}

    def mirrors(node: Any) -> bool:
        leaves = jax.tree_util.tree_leaves_with_path(node)
        return bool(leaves) and all(
            tuple(p) in by_path and by_path[tuple(p)][0] == tuple(np.shape(x)) for p, x in leaves)

    def place(node: Any) -> Any:
        if mirrors(node):
            return jax.tree_util.tree_map_with_path(lambda p, _: by_path[tuple(p)][1], node)
        children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
        if len(children) == 1 and children[0] is node:  # an array (empty containers recurse)
            return replicated
        return jax.tree_util.tree_unflatten(treedef, [place(c) for c in children])

    return place(opt_state)


# ------------------------------------------------------------------ the whole state


def state_shardings(state: Any, mesh: Mesh, sharding: Rule = "fsdp", *,
                    axis: str = "data", owner: str = "state_shardings") -> Any:
    """The sharding of every leaf of a ``TrainState``, as a ``TrainState`` of ``NamedSharding``.

    Params by ``sharding``, optimizer state like its params
    (:func:`opt_state_shardings`), model state and step replicated. A pure
    function of the state's paths and shapes, so it works on
    ``jax.eval_shape`` output too. ``owner`` names the caller in error messages.

    Example:
        >>> shardings = fnn.sharding.state_shardings(state, mesh, "fsdp")
        >>> state = jax.device_put(state, shardings)
    """
    params = param_shardings(state.params, mesh, sharding, axis=axis, owner=owner)
    replicated = NamedSharding(mesh, PartitionSpec())
    return state._replace(
        params=params,
        model_state=jax.tree_util.tree_map(lambda _: replicated, state.model_state),
        opt_state=opt_state_shardings(state.opt_state, state.params, params, mesh),
        step=jax.tree_util.tree_map(lambda _: replicated, state.step))


def _same_devices(a: Any, b: Mesh) -> bool:
    return (isinstance(a, Mesh) and a.axis_names == b.axis_names
            and a.devices.shape == b.devices.shape and bool((a.devices == b.devices).all()))


def specs_on(tree: Any, mesh: Mesh) -> Any:
    """The ``PartitionSpec`` s ``tree``'s arrays already have, if every one is a
    ``NamedSharding`` on ``mesh``'s devices and axes; else None (e.g. arrays made
    without a mesh, on one device)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves or not all(isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding)
                             and _same_devices(x.sharding.mesh, mesh) for x in leaves):
        return None
    return jax.tree_util.tree_map(lambda x: x.sharding.spec, tree)


def resolve(owner: str, state: Any, mesh: Mesh, sharding: Rule, axis: str) -> Any:
    """The placement a sharded step keeps: by ``sharding``, or with ``sharding=None``
    the params' own placement (replicated if they are not on the mesh yet); the
    optimizer state always follows the params (:func:`state_shardings`)."""
    if sharding is None:
        sharding = specs_on(state.params, mesh)
        if sharding is None:
            sharding = "replicated"
    return state_shardings(state, mesh, sharding, axis=axis, owner=owner)


def place(tree: Any, shardings: Any) -> Any:
    """``tree``'s arrays copied onto ``shardings`` (new buffers, also where already placed).

    With several processes, a leaf that is not yet a global array must hold the
    same values in every process (e.g. params initialized from the same key).
    """
    multi = jax.process_count() > 1

    def put(x: Any, s: NamedSharding) -> jax.Array:
        if multi and not (isinstance(x, jax.Array) and not x.is_fully_addressable):
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, s, lambda index: host[index])
        # device_put may alias a single-device array's buffer on that device even with
        # may_alias=False (jax 0.10.2, replicated targets): copy first, the state owns its buffers
        return jax.device_put(jnp.array(x) if isinstance(x, jax.Array) else x, s)

    return jax.tree_util.tree_map(put, tree, shardings)


def batch_sharding(mesh: Mesh, axis: str = "data") -> NamedSharding:
    """Examples (the leading axis) split over ``axis``, the other dimensions whole."""
    return NamedSharding(mesh, PartitionSpec(axis))


def device_mesh(devices: int, axis: str = "data") -> Mesh:
    """A one-axis mesh over the first ``devices`` devices; on the CPU, creates that many.

    Before JAX has started (no array made, no device asked for), this sets
    ``jax_num_cpu_devices`` (the config form of ``XLA_FLAGS=
    --xla_force_host_platform_device_count``), so the CPU offers ``devices``
    virtual devices; a GPU or TPU backend is unaffected and its first
    ``devices`` devices are used. After JAX has started, the devices it has must suffice.

    Example:
        >>> mesh = fnn.sharding.device_mesh(8)      # first thing in the program
    """
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or devices < 1:
        raise ValueError(f"device_mesh: devices must be an int >= 1; got {devices!r}.")
    try:
        if jax.config.jax_num_cpu_devices < devices:
            jax.config.update("jax_num_cpu_devices", int(devices))
        started = False
    except RuntimeError:  # the backends are initialized: the device count is fixed
        started = True
    available = jax.devices()
    if len(available) < devices:
        why = (f"JAX had already started with {len(available)}, so no more CPU devices could be "
               f"made; ask for the mesh before any other JAX call, or set XLA_FLAGS="
               f"--xla_force_host_platform_device_count={devices} before starting Python"
               if started else f"the {available[0].platform} backend has {len(available)}")
        raise ValueError(f"device_mesh: {devices} devices were asked for, but {why}.")
    return Mesh(np.array(available[:devices]), (axis,), axis_types=(AxisType.Auto,))


# ------------------------------------------------------------------ memory


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes each device holds of ``tree``'s arrays, summed from their ``addressable_shards``.

    Measured from the buffers that exist, not computed from a formula: a
    replicated leaf counts in full on every device, a sharded one by its shard.

    Example:
        >>> max(fnn.sharding.bytes_per_device((state.params, state.opt_state)).values())
    """
    totals: dict[Any, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        if not isinstance(leaf, jax.Array):
            continue
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals
