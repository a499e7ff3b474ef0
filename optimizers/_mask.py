"""Masks: which leaves of a params tree a wrapper or a per-leaf option selects.

A mask is a pytree of bools or a function ``params -> pytree of bools``. It is
read as a *prefix* of the params tree: a bool stands for the whole subtree at
its position, so a mask written for the user's params also fits a tree in
which some leaves were replaced by :class:`MaskedNode` (what :func:`select`
gives a wrapper nested inside another ``masked``) or are ``None``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from .packing import Packed, resolve_packed_mask


class MaskedNode(NamedTuple):
    """Stands where a mask left a leaf out: a pytree node with no leaves.

    Unlike ``None`` it is a placeholder, not a gradient: a tree holding
    MaskedNodes keeps the user's structure (and the user's ``None`` leaves stay
    ``None``), so every transform inside a wrapper, and every mask written for
    the user's params, sees the same shape of tree. (optax has the same node.)
    """


def _is_bool(value: Any) -> bool:
    """A Python/NumPy bool or a concrete scalar bool array (a tracer is not a bool here)."""
    if isinstance(value, (bool, np.bool_)):
        return True
    if isinstance(value, jax.core.Tracer):
        return False
    return isinstance(value, (np.ndarray, jax.Array)) and value.dtype == bool and value.ndim == 0


def is_mask_tree(mask: Any) -> bool:
    """Whether ``mask`` is used as a tree: its leaves are all bools (even if it is callable,
    e.g. an Equinox Module holding bools), or it is not callable at all."""
    leaves = jax.tree_util.tree_leaves(mask)
    if leaves and all(_is_bool(x) for x in leaves):
        return True
    return not callable(mask)


def _check_bools(owner: str, resolved: Any) -> list[bool]:
    out = []
    for path, value in jax.tree_util.tree_flatten_with_path(resolved)[0]:
        where = f"mask{jax.tree_util.keystr(path)}"
        if isinstance(value, jax.core.Tracer):
            raise TypeError(
                f"{owner}: {where} is a traced value; a mask must hold Python bools (it "
                "decides at trace time which leaves are updated), so compute it from shapes "
                "or names, not from array values."
            )
        if not _is_bool(value):
            shape = getattr(value, "shape", None)
            got = f"an array of shape {shape}" if shape else f"{type(value).__name__} {value!r}"
            raise TypeError(
                f"{owner}: {where} must be a bool (one per param leaf or subtree; masks select "
                f"whole leaves, not elements); got {got}."
            )
        out.append(bool(value))
    return out


def resolve(owner: str, mask: Any, tree: Any) -> Any:
    """The mask as a pytree of Python bools, a prefix of ``tree`` (called if a function)."""
    resolved = mask if is_mask_tree(mask) else mask(tree)
    _check_bools(owner, resolved)
    return resolved


def leaf_values(owner: str, mask: Any, tree: Any, *, tree_name: str = "params") -> list[bool]:
    """One bool per leaf of ``tree``: the value of the mask leaf above it (prefix rule)."""
    if isinstance(tree, Packed):  # a mask over the unpacked tree, one bool per buffer
        resolved = resolve_packed_mask(owner, mask, tree)
    else:
        resolved = resolve(owner, mask, tree)
    return over_leaves(owner, "mask", "bool", _check_bools(owner, resolved), resolved, tree,
                       tree_name)


def over_leaves(owner: str, name: str, noun: str, values: list, prefix: Any, tree: Any,
                tree_name: str) -> list:
    """``values`` (one per leaf of ``prefix``, a prefix of ``tree``) repeated over the leaves
    of ``tree`` below each, or a ValueError showing both structures (``name``: the prefix's
    name, ``noun``: what one of its leaves is)."""
    treedef = jax.tree_util.tree_structure(prefix)
    try:
        subtrees = treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{owner}: the structure of {name} does not match {tree_name}: {name} must have "
            f"the structure of {tree_name} or of a prefix of it (one {noun} per leaf, or per "
            f"subtree).\n  {name}: {treedef}\n  {tree_name}: "
            f"{jax.tree_util.tree_structure(tree)}\n  ({error})"
        ) from None
    out = []
    for value, subtree in zip(values, subtrees):
        out.extend([value] * len(jax.tree_util.tree_leaves(subtree)))
    return out


def select(tree: Any, keep: list[bool]) -> Any:
    """``tree`` with the leaves where ``keep`` is False replaced by :class:`MaskedNode`."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(
        treedef, [x if k else MaskedNode() for x, k in zip(leaves, keep)])
