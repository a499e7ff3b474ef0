"""The optimizer protocol and the one mechanism that lifts array rules to pytrees.

Every optimizer and building block in this package is written once as a *rule*
in two levels, scalars first, then arrays:

    def rule(count, **hyperparams):            # scalar work, once per update
        ...
        def leaf(g, p, *moments):              # array work, for every leaf or buffer
            return update, (new_moment, ...)
        return leaf

``count`` is the step count (1 on the first update), the hyperparameters are
scalars, ``g`` is a gradient array, ``p`` the matching param (or ``None``) and
the moments are the rule's per-param state arrays. :func:`from_rule` lifts such
a rule to an :class:`Optimizer` over pytrees: it creates the state, checks tree
structures, resolves schedules, applies the dtype policy and maps the leaf
function over the leaves. The same rule runs unchanged on packed flat buffers
(:mod:`optimizers.packing`). Nothing else in the package walks trees of gradients.

Dtype policy (DESIGN.md): hyperparameters are stored at the params' widest float
dtype but never below float32; the rule runs in float32 for bfloat16/float16
leaves (float64 leaves stay float64); updates are cast back to the param dtype,
moments to their own dtype: the param dtype but at least float32 (float32 for
bfloat16/float16 params: float16 moments overflow and underflow, bfloat16 ones
cannot decay by β₂ = 0.999 a step), unless ``moment_dtype`` is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _mask, _validate

Params = Any
Updates = Any
State = Any
Schedule = Callable[[jax.Array], jax.Array]


class Optimizer(NamedTuple):
    """Pure functions, the same protocol as optax's GradientTransformation (init, update first).

    ``init(params) -> state`` and
    ``update(grads, state, params=None, **extra) -> (updates, state)``: the exact
    update, applied with :func:`apply_updates` (or ``p + u``).

    ``step(grads, state, params, **extra) -> (params, state)`` (optional, None
    when the optimizer has none) steps the params itself: the fast path, which
    :func:`optimizers.step` uses (one pass over memory on the CPU for the
    optimizers with kernels). An optimizer without it is stepped as
    ``update`` + :func:`apply_updates`.

    Example:
        >>> tx = optimizers.sgd(0.1)
        >>> state = tx.init(params)
        >>> updates, state = tx.update(grads, state, params)
        >>> params = optimizers.apply_updates(params, updates)
    """

    init: Callable[[Params], State]
    update: Callable[..., tuple[Updates, State]]
    step: Callable[..., tuple[Params, State]] | None = None


# --------------------------------------------------------------------------- trees


def _paths(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def structure_error(owner: str, name: str, tree: Any, ref_name: str, reference: Any) -> ValueError:
    """A ValueError that shows both tree structures and the leaves only one of them has."""
    mine, theirs = _paths(tree), _paths(reference)
    only_mine = [p for p in mine if p not in set(theirs)]
    only_theirs = [p for p in theirs if p not in set(mine)]
    lines = [
        f"{owner}: the structure of {name} does not match {ref_name}.",
        f"  {name}: {jax.tree_util.tree_structure(tree)}",
        f"  {ref_name}: {jax.tree_util.tree_structure(reference)}",
    ]
    if only_mine:
        lines.append(f"  only in {name}: {', '.join(only_mine[:10])}")
    if only_theirs:
        lines.append(f"  only in {ref_name}: {', '.join(only_theirs[:10])}")
    lines.append(
        "Pass gradients for exactly the params tree given to init (same keys, same nesting)."
    )
    return ValueError("\n".join(lines))


def check_same_structure(owner: str, name: str, tree: Any, ref_name: str, reference: Any) -> None:
    """Raises :func:`structure_error` unless the trees have the same structure and shapes."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    ref_leaves, ref_treedef = jax.tree_util.tree_flatten(reference)
    if treedef != ref_treedef:
        raise structure_error(owner, name, tree, ref_name, reference)
    if [jnp.shape(a) for a in leaves] == [jnp.shape(b) for b in ref_leaves]:
        return  # the common case: no paths built
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(tree)[0], ref_leaves):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(
                f"{owner}: {name}{jax.tree_util.keystr(path)} has shape {jnp.shape(a)}, "
                f"but {ref_name}{jax.tree_util.keystr(path)} has shape {jnp.shape(b)}."
            )


def check_float_leaves(owner: str, params: Any) -> None:
    """Raises TypeError naming the first leaf of ``params`` that is not floating point."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{owner}: optimizers update floating-point params only, but "
                f"params{jax.tree_util.keystr(path)} has dtype {dtype}. Keep integer data "
                "out of the params tree, or exclude it with optimizers.masked(tx, mask)."
            )


def hyperparam_dtype(leaves: Sequence[Any]) -> jnp.dtype:
    """float64 if any leaf is float64, else float32 (never below float32)."""
    dtypes = [jnp.result_type(x) for x in leaves]
    return jnp.dtype(jnp.float64) if jnp.dtype(jnp.float64) in dtypes else jnp.dtype(jnp.float32)


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype a rule runs in: float32 for low-precision floats, else the dtype itself."""
    return jnp.promote_types(dtype, jnp.float32)


def mask_leaves(owner: str, mask: Any, tree: Any) -> list[bool]:
    """One Python bool per leaf of ``tree`` from a mask (see :mod:`optimizers._mask`)."""
    return _mask.leaf_values(owner, mask, tree)


def safe_increment(count: jax.Array) -> jax.Array:
    """count + 1, saturating at the largest int32 instead of wrapping around."""
    return jnp.where(count < jnp.iinfo(jnp.int32).max, count + 1, count)


def check_optimizer(owner: str, position: str, tx: Any) -> None:
    """Raises TypeError unless ``tx`` is an Optimizer-like (init, update) pair."""
    if hasattr(tx, "init") and hasattr(tx, "update"):
        return
    hint = ""
    if callable(tx) and hasattr(tx, "__name__"):
        hint = f" It looks like the constructor itself; call it, e.g. {tx.__name__}(...)."
    raise TypeError(
        f"{owner}: {position} must be an optimizer with init and update "
        f"(e.g. optimizers.sgd(0.1)); got {type(tx).__name__}.{hint}"
    )


# --------------------------------------------------------------------------- rules


def split_hyperparams(owner: str, values: Mapping[str, Any]) -> tuple[dict, dict]:
    """Validates hyperparameters and splits them into fixed values and schedules."""
    fixed, schedules = {}, {}
    for name, value in values.items():
        _validate.check(owner, name, value)
        (schedules if _validate.is_schedule(value) else fixed)[name] = value
    return fixed, schedules


# --------------------------------------------------------------------------- apply and chain


def apply_updates(params: Params, updates: Updates) -> Params:
    """Adds updates to params leaf by leaf, keeping each param's dtype: p ← p + u.

    A pure sum; the fast path that writes the params in place is :func:`step`.

    Example:
        >>> params = optimizers.apply_updates(params, updates)
    """
    check_same_structure("apply_updates", "updates", updates, "params", params)
    return jax.tree_util.tree_map(
        lambda p, u: jnp.asarray(p + u).astype(jnp.result_type(p)), params, updates)


def step(tx: Any, grads: Updates, state: State, params: Params, **extra) -> tuple[Params, State]:
    """One optimizer step that writes the params: ``(new_params, new_state)``.

    Equal (to float32 rounding) to ``updates, state = tx.update(grads, state, params)``
    followed by ``apply_updates(params, updates)``, but it owns the parameter
    write, so on the CPU the float32 leaves of Adam/AdamW, AdaGrad, RMSProp and
    Momentum (alone or inside ``chain``, ``masked``, ``partition``,
    ``skip_nonfinite``, ``accumulate``, ``switch``) are stepped in one pass, in
    place when params and state are donated to ``jax.jit``. This is what
    ``fnn.train`` uses; use it in your own loops. An optimizer without a fast
    path (e.g. one from optax) is stepped as update + apply_updates.

    Donate params and state in the order they come back, as below: JAX pairs
    donated buffers with results of the same shape and dtype in order, so a
    step taking ``(state, params)`` and returning ``(params, state)`` pairs each
    param with a moment's buffer, and XLA copies every buffer before the in-place
    kernel (measured, Adam on one 10M leaf: 60–100 ms per step instead of 7–10).

    Args:
      tx: an :class:`Optimizer` (or any optax-protocol ``(init, update)`` pair).
      grads, state, params: as for ``tx.update``; params are required.
      **extra: passed on to ``tx``.

    Example:
        >>> @functools.partial(jax.jit, donate_argnums=(0, 1))
        ... def train_step(params, opt_state, batch):
        ...     grads = jax.grad(loss)(params, batch)
        ...     return optimizers.step(tx, grads, opt_state, params)
    """
    check_optimizer("step", "tx", tx)
    if params is None:
        raise ValueError("step: params are required (the step writes them); "
                         "use tx.update(grads, state) for updates without params.")
    own = getattr(tx, "step", None)
    if own is not None:
        return own(grads, state, params, **extra)
    updates, state = tx.update(grads, state, params, **extra)
    return apply_updates(params, updates), state


def chain(*transforms: Optimizer) -> Optimizer:
    """Composes optimizers: each link's updates are the next link's gradients.

    The state is a tuple with one state per link. ``optimizers.hyperparams`` reads
    the hyperparameters of every link (``link=i`` selects one).

    Example:
        >>> tx = optimizers.chain(optimizers.clip_by_global_norm(1.0), optimizers.adam(1e-3))
    """
    for i, tx in enumerate(transforms):
        check_optimizer("chain", f"argument {i}", tx)

    def init(params: Params) -> tuple:
        return tuple(tx.init(params) for tx in transforms)

    def check(state: Any, entry: str) -> None:
        if type(state) is not tuple or len(state) != len(transforms):
            raise TypeError(
                f"chain.{entry}: state must be the tuple of {len(transforms)} link states "
                f"returned by chain(...).init(params); got {type(state).__name__}."
            )

    def run_links(links: Sequence[Any], grads: Updates, states: Sequence[Any], params: Params,
                  extra: dict) -> tuple[Updates, list]:
        new_states = []
        for tx, link_state in zip(links, states):
            grads, link_state = tx.update(grads, link_state, params, **extra)
            new_states.append(link_state)
        return grads, new_states

    def update(grads: Updates, state: tuple, params: Params = None, **extra) -> tuple:
        check(state, "update")
        updates, new_states = run_links(transforms, grads, state, params, extra)
        return updates, tuple(new_states)

    def chained_step(grads: Updates, state: tuple, params: Params, **extra) -> tuple:
        # every link but the last transforms the gradients; the last one steps the params
        check(state, "step")
        updates, head = run_links(transforms[:-1], grads, state[:-1], params, extra)
        params, last = step(transforms[-1], updates, state[-1], params, **extra)
        return params, (*head, last)

    return Optimizer(init, update, chained_step if transforms else None)
