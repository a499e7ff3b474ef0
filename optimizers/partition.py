"""Per-group optimizers and freezing: each leaf of the params goes to the optimizer of its label.

:func:`partition` is optax's ``multi_transform``; :func:`freeze` is its
``set_to_zero``. Together they are the way to freeze part of a model, or to
train groups of params with different optimizers or learning rates::

    labels = {"backbone": "frozen", "head": "train"}
    tx = optimizers.partition({"frozen": optimizers.freeze(),
                               "train": optimizers.adam(1e-3)}, labels)

Each group's optimizer sees the user's tree with an empty
:class:`~optimizers._mask.MaskedNode` where a leaf belongs to another group
(``None`` leaves stay ``None``), so its state holds moments for its own leaves
only, and masks or labels written for the user's params fit at any depth. The
groups' states are links named by their labels: ``optimizers.hyperparams(state,
"head")`` and ``optimizers.set_hyperparams(state, "head", learning_rate=…)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _mask
from ._base import Optimizer, check_optimizer, check_same_structure, step
from .packing import Packed


class PartitionState(NamedTuple):
    groups: dict  # label -> the state of that group's optimizer


class FreezeState(NamedTuple):
    """:func:`freeze` keeps no state."""


def freeze() -> Optimizer:
    """A zero update for every leaf, and no state: the leaves it is given do not move.

    Update: u = −0 (negative zero, so that p + u is p bit for bit, −0.0 params
    included). Use it as a group of :func:`partition` to freeze those params:
    their values and their (absent) optimizer state stay exactly as they are.
    (optax's ``set_to_zero``.) As a link of a chain it zeroes the gradients the
    later links see, which is not freezing: Adam's moments would still move them.

    Example:
        >>> tx = optimizers.partition({"backbone": optimizers.freeze(),
        ...                            "head": optimizers.adam(1e-3)},
        ...                           {"backbone": "backbone", "head": "head"})
    """

    def init(params: Any) -> FreezeState:
        del params
        return FreezeState()

    def update(grads: Any, state: FreezeState, params: Any = None, **extra) -> tuple:
        del params, extra
        if not isinstance(state, FreezeState):
            raise TypeError("freeze.update: state must be the FreezeState returned by "
                            f"freeze().init(params); got {type(state).__name__}.")
        return jax.tree_util.tree_map(lambda g: jnp.full(jnp.shape(g), -0.0, jnp.result_type(g)),
                                      grads), state

    def freeze_step(grads: Any, state: FreezeState, params: Any, **extra) -> tuple:
        update(grads, state)  # the same checks
        return params, state  # p + (−0) is p

    return Optimizer(init, update, freeze_step)


def _is_label_tree(labels: Any) -> bool:
    """Labels are a tree when their leaves are all strings (even if callable) or not callable."""
    leaves = jax.tree_util.tree_leaves(labels)
    if leaves and all(isinstance(x, str) for x in leaves):
        return True
    return not callable(labels)


def _takes_path_and_leaf(fn: Callable) -> bool:
    """Whether a labels function is ``(path, leaf) -> label`` rather than ``params -> labels``."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature (a builtin): the params form
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in parameters if p.kind in kinds and p.default is p.empty]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def _resolve(labels: Any, tree: Any) -> Any:
    """The labels as a tree (a prefix of ``tree``): called, or mapped over leaves, if a function."""
    if _is_label_tree(labels):
        return labels
    if _takes_path_and_leaf(labels):
        return jax.tree_util.tree_map_with_path(labels, tree)
    return labels(tree)


def leaf_labels(labels: Any, tree: Any, groups: Mapping[str, Any], *,
                tree_name: str = "params") -> list[str]:
    """One label per leaf of ``tree`` (one per buffer of a :class:`Packed`), each a key of
    ``groups``; the labels tree is read as a prefix of ``tree``."""
    if isinstance(tree, Packed):
        return _packed_labels(labels, tree, groups)
    resolved = _resolve(labels, tree)
    values = []
    for path, value in jax.tree_util.tree_flatten_with_path(resolved)[0]:
        where = f"labels{jax.tree_util.keystr(path)}"
        if not isinstance(value, str):
            raise TypeError(
                f"partition: {where} must be a str naming a group of transforms (one of "
                f"{sorted(groups)}); got {type(value).__name__} {value!r}."
            )
        if value not in groups:
            raise ValueError(
                f"partition: {where} is {value!r}, which names no group; the transforms are "
                f"{sorted(groups)}. Add a transform for {value!r} (optimizers.freeze() to "
                "freeze those params) or fix the label."
            )
        values.append(value)
    return _mask.over_leaves("partition", "labels", "label", values, resolved, tree, tree_name)


def _packed_labels(labels: Any, packed: Packed, groups: Mapping[str, Any]) -> list[str]:
    """One label per buffer; labels are given for the unpacked params (of ShapeDtypeStructs)."""
    per_leaf = leaf_labels(labels, packed.layout.shapes(), groups, tree_name="the unpacked params")
    per_buffer: dict[str, set] = {}
    for slot, label in zip(packed.layout.slots, per_leaf):
        per_buffer.setdefault(slot.group, set()).add(label)
    for name, found in per_buffer.items():
        if len(found) > 1:
            raise ValueError(
                f"partition: packed buffer {name!r} holds leaves of groups {sorted(found)}, but "
                "each group's optimizer must own whole buffers. Pack with group= so that every "
                "group gets its own buffers: optimizers.pack(params, group=lambda path, leaf: "
                "<the label of that leaf>) (a labels function (path, leaf) -> label can be "
                "passed as group= itself)."
            )
    return [per_buffer[name].pop() for name, _ in packed.layout.sizes]


def partition(transforms: Mapping[str, Optimizer], labels: Any) -> Optimizer:
    """Applies a different optimizer to each group of leaves, chosen by label.

    Update: uᵢ = transforms[labelᵢ](g restricted to the leaves of that label)ᵢ for
    every leaf i. Each group's optimizer sees only its own leaves (the others are
    empty placeholders) and keeps state, moments included, for them only. With
    ``freeze()`` as a group's transform, its params and state never change (bit
    for bit). This is the one way to freeze params, or to give groups their own
    learning rates; :func:`optimizers.masked` is for applying a transform to
    some leaves within a chain.

    The groups are links named by their labels: ``hyperparams(state, "head")``
    reads group ``"head"`` and ``set_hyperparams(state, "head", learning_rate=…)``
    sets it (inside a chain, the path: ``(1, "head")``).

    Args:
      transforms: label -> optimizer (e.g. ``{"backbone": freeze(), "head":
        adam(1e-3)}``); labels are strings.
      labels: which group each leaf belongs to, one of:
        a pytree of strings with the structure of the params or of a prefix of
        it (one label stands for a whole subtree); a function
        ``(path, leaf) -> label`` (two positional arguments, as ``pack``'s
        ``group=``) called for every leaf; or a function ``params -> pytree of
        labels``. Packed params need each buffer in one group: pack with
        ``group=`` the same labels function.

    Example:
        >>> tx = optimizers.partition(
        ...     {"backbone": optimizers.sgd(1e-4), "head": optimizers.sgd(1e-2)},
        ...     lambda path, leaf: "head" if "head" in jax.tree_util.keystr(path) else "backbone")
        >>> state = optimizers.set_hyperparams(tx.init(params), "head", learning_rate=1e-3)
    """
    if not isinstance(transforms, Mapping) or not transforms:
        raise TypeError(
            "partition: transforms must be a non-empty dict label -> optimizer, e.g. "
            f"{{'backbone': optimizers.freeze(), 'head': optimizers.adam(1e-3)}}; got "
            f"{type(transforms).__name__}."
        )
    for label, tx in transforms.items():
        if not isinstance(label, str):
            raise TypeError(f"partition: the labels of transforms must be str (a group is "
                            f"named by its label); got {type(label).__name__} {label!r}.")
        check_optimizer("partition", f"transforms[{label!r}]", tx)
    if labels is None:
        raise TypeError("partition: labels must be a pytree of str, or a function (path, leaf) "
                        "-> str or params -> pytree of str; got None.")
    transforms = dict(transforms)

    def labels_of(tree: Any) -> list[str]:
        return leaf_labels(labels, tree, transforms)

    def init(params: Any) -> PartitionState:
        groups = {name: _mask.select(params, [label == name for label in labels_of(params)])
                  for name in transforms}
        return PartitionState({name: tx.init(groups[name]) for name, tx in transforms.items()})

    def run_groups(grads: Any, state: PartitionState, params: Any, entry: str, extra: dict):
        if not isinstance(state, PartitionState) or set(state.groups) != set(transforms):
            raise TypeError(
                f"partition.{entry}: state must be the PartitionState of groups "
                f"{sorted(transforms)} returned by partition(...).init(params); got "
                f"{type(state).__name__}"
                + (f" with groups {sorted(state.groups)}." if isinstance(state, PartitionState)
                   else ".")
            )
        if params is not None:
            check_same_structure(f"partition.{entry}", "grads", grads, "params", params)
        leaf_label = labels_of(params if params is not None else grads)
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        merged: list[Any] = [None] * len(leaves)
        new_groups = {}
        for name, tx in transforms.items():
            keep = [label == name for label in leaf_label]
            inner_params = None if params is None else _mask.select(params, keep)
            try:
                if entry == "step":  # each group writes its own params
                    inner, new_groups[name] = step(tx, _mask.select(grads, keep),
                                                   state.groups[name], inner_params, **extra)
                else:
                    inner, new_groups[name] = tx.update(_mask.select(grads, keep),
                                                        state.groups[name], inner_params, **extra)
            except ValueError as error:
                raise ValueError(
                    f"partition.{entry}: group {name!r}: {error}\nIf the labels now give this "
                    "group other leaves than when the state was made, make a new state with "
                    "tx.init(params) (or keep the labels)."
                ) from error
            chosen = iter(jax.tree_util.tree_leaves(inner))
            for i, k in enumerate(keep):
                if k:
                    merged[i] = next(chosen)
        return jax.tree_util.tree_unflatten(treedef, merged), PartitionState(new_groups)

    def update(grads: Any, state: PartitionState, params: Any = None, **extra) -> tuple:
        return run_groups(grads, state, params, "update", extra)

    def partition_step(grads: Any, state: PartitionState, params: Any, **extra) -> tuple:
        return run_groups(grads, state, params, "step", extra)

    return Optimizer(init, update, partition_step)
