"""Combinators: initializers are plain functions, so they compose.

* :func:`scaled` multiplies an initializer's draws by a factor;
* :func:`tree_init` initializes a whole pytree of shapes from one key, with one
  initializer for every leaf or a :class:`Rule` that picks one per leaf
  (:func:`by_ndim`: weights vs biases; :func:`by_path`: by the leaf's name).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import Initializer, check_key, check_number, check_shape


def scaled(initializer: Initializer, factor: float) -> Initializer:
    """``factor`` times the draws of ``initializer``: w = factor · w₀ (variance × factor²).

    The product is computed in float32 (or float64) and cast back, so low-precision
    results are rounded once.

    Args:
      initializer: any initializer ``(key, shape, dtype) -> array``.
      factor: a real number (may be negative or a traced value).

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
      >>> small = init.scaled(init.xavier_uniform(), 0.1)   # e.g. a residual branch's last layer
      >>> w = small(jax.random.key(0), (64, 64))
    """
    if not callable(initializer):
        raise TypeError(f"scaled: initializer must be callable (key, shape, dtype) -> array; "
                        f"got {initializer!r}.")
    check_number("scaled", "factor", factor)

    def wrapped(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        x = initializer(key, shape, dtype)
        return (x.astype(jnp.promote_types(x.dtype, jnp.float32)) * factor).astype(x.dtype)

    return wrapped


class Rule(NamedTuple):
    """Picks the initializer of each leaf for :func:`tree_init`.

    ``choose(path, shape) -> initializer``, with ``path`` the leaf's key path
    (a tuple of ``jax.tree_util`` keys) and ``shape`` a tuple of ints. Made by
    :func:`by_ndim` and :func:`by_path`, or directly: ``init.Rule(my_choose)``.
    """

    choose: Callable[[tuple, tuple[int, ...]], Initializer]


def by_ndim(weights: Initializer, biases: Initializer) -> Rule:
    """A :class:`Rule`: ``weights`` for leaves of rank ≥ 2 (matrices, kernels), else ``biases``.

    Args:
      weights: the initializer of every leaf with ndim ≥ 2.
      biases: the initializer of every leaf with ndim ≤ 1.

    Returns:
      A :class:`Rule` for :func:`tree_init`.

    Example:
      >>> rule = init.by_ndim(init.he_normal(), init.zeros())
    """
    for name, value in (("weights", weights), ("biases", biases)):
        if not callable(value):
            raise TypeError(f"by_ndim: {name} must be an initializer; got {value!r}.")
    return Rule(lambda path, shape: weights if len(shape) >= 2 else biases)


def by_path(choose: Callable[[str, tuple[int, ...]], Initializer]) -> Rule:
    """A :class:`Rule` from ``choose(path, shape)``, the path as a string like ``"['dense']['w']"``.

    The string is ``jax.tree_util.keystr`` of the leaf's key path.

    Args:
      choose: maps (path string, shape) to an initializer.

    Returns:
      A :class:`Rule` for :func:`tree_init`.

    Example:
      >>> rule = init.by_path(lambda path, shape: init.zeros() if path.endswith("['b']")
      ...                     else init.xavier_uniform())
    """
    if not callable(choose):
        raise TypeError(f"by_path: choose must be a function (path, shape) -> initializer; "
                        f"got {choose!r}.")
    return Rule(lambda path, shape: choose(jax.tree_util.keystr(path), shape))


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(_is_int(d) for d in x)


def leaf_key(key: jax.Array, path: tuple) -> jax.Array:
    """The key of the leaf at ``path``: ``key`` folded with 64 bits of SHA-256(keystr(path)).

    It depends only on the key and the path (not on the other leaves), is the
    same in every process and Python version, and two paths collide with
    probability about 2⁻⁶⁴.
    """
    digest = hashlib.sha256(jax.tree_util.keystr(path).encode()).digest()
    for i in (0, 4):
        key = jax.random.fold_in(key, int.from_bytes(digest[i:i + 4], "little"))
    return key


def tree_init(key: jax.Array, shapes: Any, initializer: Initializer | Rule,
              dtype: Any = None) -> Any:
    """Initializes a pytree of shapes from one key, with one initializer or a rule per leaf.

    Leaf i becomes ``initializer_i(leaf_key(key, path_i), shape_i, dtype_i)``
    where ``initializer_i`` is ``initializer`` itself or ``rule.choose(path_i,
    shape_i)``. Each leaf's key is derived from ``key`` and the leaf's path
    alone (:func:`leaf_key`), so adding, removing or reordering other leaves
    never changes a leaf's values, and the same key gives the same tree.

    Args:
      key: a PRNG key, e.g. ``jax.random.key(0)``.
      shapes: a pytree (dicts, lists, tuples, NamedTuples, …) whose leaves are
        shapes: tuples of ints, or anything with ``.shape`` and ``.dtype``
        (arrays, ``jax.ShapeDtypeStruct``, e.g. from ``jax.eval_shape``). A
        shape must be a tuple: ``[64, 10]`` is a list of two ints, an error.
      initializer: one initializer for every leaf, or a :class:`Rule` choosing
        one per leaf (:func:`by_ndim`, :func:`by_path`).
      dtype: the dtype of every leaf; by default each leaf's own dtype when it
        has one, else float32.

    Returns:
      A pytree of the same structure with an array in place of every shape.

    Example:
      >>> params = init.tree_init(jax.random.key(0), {"w": (64, 10), "b": (10,)},
      ...                         init.by_ndim(init.xavier_uniform(), init.zeros()))
      >>> params["w"].shape, params["b"].tolist() == [0.0] * 10
      ((64, 10), True)
    """
    check_key("tree_init", key)
    if not callable(initializer) and not isinstance(initializer, Rule):
        raise TypeError("tree_init: initializer must be an initializer (key, shape, dtype) -> "
                        f"array or an init.Rule (e.g. init.by_ndim(...)); got {initializer!r}.")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)
    out = []
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path) or "the root"
        if _is_shape(leaf):
            shape, leaf_dtype = leaf, None
        elif hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            shape, leaf_dtype = tuple(leaf.shape), leaf.dtype
        else:
            hint = " (a list of ints is not a shape: write a tuple)" if _is_int(leaf) else ""
            raise TypeError(f"tree_init: the leaf at {where} must be a shape (a tuple of ints, "
                            f"e.g. (64, 10)) or have .shape and .dtype; got {leaf!r}{hint}.")
        shape = check_shape(f"tree_init (leaf {where})", shape)
        chosen = initializer.choose(path, shape) if isinstance(initializer, Rule) else initializer
        if not callable(chosen):
            raise TypeError(f"tree_init: the rule chose {chosen!r} for the leaf at {where}; "
                            "expected an initializer (key, shape, dtype) -> array.")
        if dtype is not None:
            leaf_dtype = dtype
        elif leaf_dtype is None:
            leaf_dtype = jnp.float32
        out.append(chosen(leaf_key(key, path), shape, leaf_dtype))
    return jax.tree_util.tree_unflatten(treedef, out)
