"""Combinators: initializers are plain functions, so they compose."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._checks import check_key
from .variance_scaling import Initializer


def scaled(initializer: Initializer, factor: float) -> Initializer:
    """``factor`` × the draws of ``initializer`` (variance × factor²).

    Example:
        >>> small = init.scaled(init.xavier_uniform(), 0.1)
    """
    if not callable(initializer):
        raise TypeError(f"scaled: initializer must be callable; got {initializer!r}.")

    def wrapped(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        x = initializer(key, shape, dtype)
        return (x.astype(jnp.promote_types(x.dtype, jnp.float32)) * factor).astype(x.dtype)

    return wrapped


class Rule(NamedTuple):
    """Chooses an initializer per leaf for :func:`tree_init`: ``choose(path, shape)``."""

    choose: Callable[[Any, tuple], Initializer]


def by_ndim(weights: Initializer, biases: Initializer) -> Rule:
    """A rule for :func:`tree_init`: ``weights`` for leaves of rank ≥ 2, ``biases`` otherwise.

    Example:
        >>> rule = init.by_ndim(init.he_normal(), init.zeros())
    """
    return Rule(lambda path, shape: weights if len(shape) >= 2 else biases)


def by_path(choose: Callable[[str, tuple], Initializer]) -> Rule:
    """A rule from ``choose(path_string, shape) -> initializer``, path as ``"['dense']['w']"``.

    Example:
        >>> rule = init.by_path(lambda path, shape: init.zeros() if "'b'" in path
        ...                     else init.xavier_uniform())
    """
    return Rule(lambda path, shape: choose(jax.tree_util.keystr(path), shape))


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def tree_init(key: jax.Array, shapes: Any, initializer: Initializer | Rule,
              dtype: Any = jnp.float32) -> Any:
    """Initializes a pytree of shapes from one key, with one initializer or a rule per leaf.

    Each leaf's key is ``fold_in(key, crc32(path))``: a leaf's values depend only
    on the key and its own path, not on the other leaves.

    Args:
      key: a PRNG key.
      shapes: a pytree whose leaves are shape tuples (or arrays/ShapeDtypeStructs,
        whose shapes are used).
      initializer: an initializer for every leaf, or a :class:`Rule` choosing one
        per leaf (:func:`by_ndim`, :func:`by_path`).
      dtype: the dtype of every leaf.

    Example:
        >>> params = init.tree_init(jax.random.key(0), {"w": (64, 10), "b": (10,)},
        ...                         init.by_ndim(init.xavier_uniform(), init.zeros()))
    """
    check_key("tree_init", key)
    if not callable(initializer) and not isinstance(initializer, Rule):
        raise TypeError(f"tree_init: initializer must be an initializer or a Rule; got "
                        f"{initializer!r}.")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)
    out = []
    for path, leaf in leaves:
        shape = leaf if _is_shape(leaf) else tuple(jnp.shape(leaf))
        chosen = initializer.choose(path, shape) if isinstance(initializer, Rule) else initializer
        leaf_key = jax.random.fold_in(key, zlib.crc32(jax.tree_util.keystr(path).encode()))
        out.append(chosen(leaf_key, shape, dtype))
    return jax.tree_util.tree_unflatten(treedef, out)
