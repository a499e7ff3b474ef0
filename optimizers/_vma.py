"""Inside ``jax.shard_map``: which mesh axes a value varies over, and keeping types consistent.

Inside ``jax.shard_map`` (with its default ``check_vma=True``) every value's type
records the set of manual mesh axes over which its per-device blocks may differ
(its *vma*): a param passed with ``P('d')`` varies over ``'d'``, a replicated
hyperparameter or step count does not. Elementwise JAX ops type their results
with the union of their operands' axes, but two things in this package must do
it themselves:

* a custom primitive typed like one operand (the one-pass kernels), and the two
  branches of ``lax.platform_dependent``, ``cond`` and ``switch``, which must
  return identical types: :func:`varying_alike`, :func:`join_branches`;
* a reduction over all leaves that must mean the same on every device (a global
  norm, "all gradients finite"): :func:`psum_varying`, :func:`all_devices`. A value
  that varies over an axis is read as one block of an array split over it, so
  its sum is completed with ``psum`` over exactly those axes; a replicated value
  is counted once. This makes the result the one of the whole, unsharded tree.

Outside shard_map every vma is empty and these functions return their input.
With ``shard_map(..., check_vma=False)`` JAX records no vma either: a sum over
leaves (:func:`psum_varying`) is then per device (the local blocks), while
:func:`all_devices` still covers every device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp


def varying_axes(x: Any) -> frozenset:
    """The manual mesh axes ``x`` varies over (an array, a tracer or a ShapeDtypeStruct)."""
    aval = x if isinstance(x, jax.ShapeDtypeStruct) else jax.typeof(x)
    axis_type = getattr(aval, "manual_axis_type", None)  # jax >= 0.10; before it, .vma
    if axis_type is not None:
        return frozenset(axis_type.varying)
    return frozenset(getattr(aval, "vma", None) or ())


def pvary(x: Any, axes: frozenset) -> Any:
    """``x`` typed as varying over ``axes`` too (no data moves; a no-op when it already is)."""
    missing = tuple(sorted(frozenset(axes) - varying_axes(x)))
    if not missing:
        return x
    pcast = getattr(jax.lax, "pcast", None)  # jax >= 0.8.2; before it, lax.pvary
    return pcast(x, missing, to="varying") if pcast is not None else jax.lax.pvary(x, missing)


def varying_alike(*arrays: Any) -> tuple:
    """The arrays, each typed as varying over every axis any of them varies over.

    An elementwise result varies over the union of its operands' axes; with its
    operands cast to that union, a primitive typed like one operand types every
    result right.
    """
    union = frozenset().union(*(varying_axes(x) for x in arrays))
    return arrays if not union else tuple(pvary(x, union) for x in arrays)


def any_varying(tree: Any) -> bool:
    """Whether some leaf of ``tree`` varies over a manual mesh axis (we are in shard_map)."""
    return any(varying_axes(x) for x in jax.tree_util.tree_leaves(tree))


def join_branches(branches: Sequence[Callable], operand: Any, inputs: Any) -> list[Callable]:
    """Branches for ``lax.cond``/``lax.switch`` whose outputs have one type across branches.

    Each output leaf is cast to vary over the union, over all branches, of the
    axes that leaf varies over (e.g. a skipped step's unchanged state next to the
    stepped state, which now varies with the sharded gradients). ``inputs`` is
    everything the branches read: when nothing in it varies, the branches are
    returned as they are (no extra tracing outside shard_map).
    """
    branches = list(branches)
    if not any_varying((operand, inputs)):
        return branches
    shapes = [jax.tree_util.tree_leaves(jax.eval_shape(b, operand)) for b in branches]
    axes = [frozenset().union(*(varying_axes(s[i]) for s in shapes))
            for i in range(len(shapes[0]))]

    def joined(branch: Callable) -> Callable:
        def run(x):
            out = branch(x)
            leaves, treedef = jax.tree_util.tree_flatten(out)
            return jax.tree_util.tree_unflatten(
                treedef, [pvary(leaf, a) for leaf, a in zip(leaves, axes)])
        return run

    return [joined(b) for b in branches]


def psum_varying(x: jax.Array) -> jax.Array:
    """``x`` summed over the mesh axes it varies over: a block's sum completed to the whole's."""
    axes = tuple(sorted(varying_axes(x)))
    return jax.lax.psum(x, axes) if axes else x


def manual_axes(x: Any) -> tuple:
    """The manual mesh axes of the ``shard_map`` that ``x`` is traced in (() outside one).

    Unlike :func:`varying_axes` this is known with ``check_vma=False`` too.
    """
    mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
    axes = getattr(mesh, "manual_axes", None)
    return tuple(axes) if axes else tuple(sorted(varying_axes(x)))


def all_devices(flag: jax.Array) -> jax.Array:
    """A boolean that is True only if it is True on every device of the enclosing shard_map.

    "False somewhere" is counted over every manual axis (a replicated flag is
    counted K times, which changes no answer), so this holds with ``check_vma=False``
    too, where JAX does not record which values vary.
    """
    axes = manual_axes(flag)
    if not axes:
        return flag
    return jax.lax.psum(jnp.logical_not(flag).astype(jnp.int32), axes) == 0
