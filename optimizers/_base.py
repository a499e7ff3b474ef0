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

from . import _fused, _mask, _scheduled, _validate
from .hyperparams import check_state_matches, used_values

Params = Any
Updates = Any
State = Any
Schedule = Callable[[jax.Array], jax.Array]


class Optimizer(NamedTuple):
    """A pair of pure functions, the same protocol as optax's GradientTransformation.

    ``init(params) -> state`` and
    ``update(grads, state, params=None, **extra) -> (updates, state)``.
    Apply the updates with :func:`apply_updates`.

    Example:
        >>> tx = optimizers.sgd(0.1)
        >>> state = tx.init(params)
        >>> updates, state = tx.update(grads, state, params)
        >>> params = optimizers.apply_updates(params, updates)
    """

    init: Callable[[Params], State]
    update: Callable[..., tuple[Updates, State]]


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
    if jax.tree_util.tree_structure(tree) != jax.tree_util.tree_structure(reference):
        raise structure_error(owner, name, tree, ref_name, reference)
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree_util.tree_leaves(reference)
    ):
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


def _cast(x: Any, dtype: Any) -> jax.Array:
    """``x`` as ``dtype``, without a conversion op when it already is."""
    x = jnp.asarray(x)
    return x if x.dtype == dtype else x.astype(dtype)


def from_rule(
    name: str,
    rule: Callable[..., Callable[..., tuple[jax.Array, tuple]]],
    state_type: type,
    hyperparams: Mapping[str, Any],
    *,
    moments: Sequence[str] = (),
    moment_init: Mapping[str, str] | None = None,
    moment_dtype: Any = None,
    needs_params: bool = False,
    mask: Any = None,
    masked: Sequence[str] = (),
    reduce: Callable[[list[jax.Array]], dict[str, jax.Array]] | None = None,
    fused: tuple[Callable, Callable] | None = None,
) -> Optimizer:
    """Lifts a two-level rule to an :class:`Optimizer` over pytrees.

    Which hyperparameter values a step uses (:func:`optimizers.hyperparams.used_values`):
    the optimizer's own (its constructor's arguments), except those changed
    with :func:`optimizers.set_hyperparams` (or traced when the state was
    made), where the state's value wins; the used values are written back to
    the state. A schedule's peak is kept and chosen the same way; the step uses
    schedule(t) · peak / own peak (:mod:`optimizers._scheduled`). A concrete value
    out of range is an error at construction; a traced one (or a schedule's
    value) out of range makes the step NaN.

    Args:
      name: the constructor's name, used in error messages.
      rule: ``rule(count, **hyperparams, **reduced) -> leaf`` does the scalar work
        once per update (per compute dtype) and returns
        ``leaf(g, p, *moments) -> (update, tuple_of_new_moments)``, written for
        arrays of any shape.
      state_type: a NamedTuple with fields ``count``, one per moment,
        ``hyperparams``, ``scheduled`` and ``overridden``; fields of moments
        that this configuration does not use (not in ``moments``) hold ``()``.
      hyperparams: the constructor's numeric hyperparameters by name; each a
        number, a (possibly traced) scalar array or a schedule ``step -> value``.
      moments: names of the per-param state arrays, in the order ``leaf`` takes them.
      moment_init: moment name -> hyperparameter name whose value fills it at init
        (other moments start at zero).
      moment_dtype: dtype of the moments; by default the param dtype, but at
        least float32 (bfloat16/float16 params get float32 moments).
      needs_params: the rule reads ``p``; ``update`` must then be given params.
      mask: pytree of bools or function params -> bools (a prefix of the params
        tree); where False, the hyperparameters named in ``masked`` are zero
        for that leaf.
      reduce: optional ``reduce(grad_leaves) -> dict of scalars`` computed over all
        leaves before the rule runs (e.g. a global norm); passed to ``rule``.
      fused: optional ``(coefficients, step)`` of a one-pass kernel
        (:mod:`optimizers._fused`): ``coefficients(count, **hyperparams)`` and
        ``step(coefficients, g, p, *moments) -> (new_p, *new_moments)``, used for
        the leaves ``_fused.eligible`` accepts; the update is then ``new_p - p``
        and :func:`apply_updates` returns ``new_p`` itself.
    """
    fixed, schedules = split_hyperparams(name, hyperparams)
    peaks = _scheduled.own_peaks(schedules)  # the settable peaks of the schedules, as data
    own = {**fixed, **peaks}
    moment_init = dict(moment_init or {})
    unused = {f: () for f in state_type._fields}  # fields of moments this configuration lacks

    def make_state(**fields):
        return state_type(**{**unused, **fields})

    if moment_dtype is not None and not jnp.issubdtype(moment_dtype, jnp.floating):
        raise TypeError(f"{name}: moment_dtype must be a floating dtype; got {moment_dtype}.")

    def init(params: Params) -> State:
        check_float_leaves(name, params)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        dtype = hyperparam_dtype(leaves)
        hyper = {k: jnp.asarray(v, dtype) for k, v in own.items()}
        # A value traced when the state is made (an optimizer built inside jit/vmap from an
        # array) is the state's own data, like a value given to set_hyperparams.
        overridden = {k: jnp.asarray(isinstance(v, jax.core.Tracer)) for k, v in own.items()}
        first = jnp.zeros((), jnp.int32)
        scheduled = {k: jnp.asarray(s(first), dtype) for k, s in schedules.items()}
        values = {**hyper, **scheduled}
        state_moments = {}
        for moment in moments:
            fill = values[moment_init[moment]] if moment in moment_init else 0
            state_moments[moment] = jax.tree_util.tree_unflatten(treedef, [
                jnp.full(jnp.shape(p), fill, moment_dtype or compute_dtype(jnp.result_type(p)))
                for p in leaves])
        return make_state(count=jnp.zeros((), jnp.int32), hyperparams=hyper, scheduled=scheduled,
                          overridden=overridden, **state_moments)

    def update(grads: Updates, state: State, params: Params = None, **extra) -> tuple:
        del extra  # part of the protocol; rules take no extra arguments
        if not isinstance(state, state_type):
            raise TypeError(
                f"{name}.update: state must be the {state_type.__name__} returned by "
                f"{name}(...).init(params); got {type(state).__name__}."
            )
        check_state_matches(name, state, fixed, schedules)
        _scheduled.check_peaks(name, state, peaks)
        _check_moments(name, state, moments, grads)
        if params is not None:
            check_same_structure(f"{name}.update", "grads", grads, "params", params)
        if needs_params and params is None:
            raise ValueError(f"{name}.update needs the params: call update(grads, state, params).")
        g_leaves, treedef = jax.tree_util.tree_flatten(grads)
        p_leaves = treedef.flatten_up_to(params) if params is not None else [None] * len(g_leaves)
        m_leaves = [treedef.flatten_up_to(getattr(state, m)) for m in moments]
        used = {k: s(state.count) for k, s in schedules.items()}
        values, stored, scheduled = used_values(
            state.hyperparams, state.overridden, own, state.scheduled, used)
        keep = [True] * len(g_leaves)
        if mask is not None:
            keep = mask_leaves(name, mask, params if params is not None else grads)
        count = safe_increment(state.count)
        reduced = reduce(g_leaves) if reduce is not None else {}

        cached: dict[tuple, Any] = {}  # (kind, dtype, kept) -> leaf function or kernel scalars

        def hyper(dtype: Any, kept: bool) -> dict:
            return {k: _cast(v if kept or k not in masked else jnp.zeros_like(v), dtype)
                    for k, v in values.items()}

        def leaf_fn(dtype: Any, kept: bool) -> Callable:
            if ("rule", dtype, kept) not in cached:
                extras = {k: _cast(v, dtype) for k, v in reduced.items()}
                cached["rule", dtype, kept] = rule(count, **hyper(dtype, kept), **extras)
            return cached["rule", dtype, kept]

        def coefficients(kept: bool) -> jax.Array:
            if ("fused", kept) not in cached:
                cached["fused", kept] = fused[0](count, **hyper(jnp.float32, kept))
            return cached["fused", kept]

        updates, new_moments = [], [[] for _ in moments]
        for i, g in enumerate(g_leaves):
            p, state_i = p_leaves[i], [m[i] for m in m_leaves]
            if fused is not None and _fused.eligible(g, p, *state_i):
                new_p, *ms = fused[1](coefficients(keep[i]), g, p, *state_i)
                u = new_p - p
                _fused.remember(u, p, new_p)
                updates.append(u)
                for j, m in enumerate(ms):
                    new_moments[j].append(m)
                continue
            g_dtype = jnp.result_type(g)
            out_dtype = jnp.result_type(p) if p is not None else g_dtype
            dtype = compute_dtype(jnp.promote_types(out_dtype, g_dtype))
            u, ms = leaf_fn(dtype, keep[i])(_cast(g, dtype), None if p is None else _cast(p, dtype),
                                            *[_cast(m, dtype) for m in state_i])
            updates.append(_cast(u, out_dtype))
            for j, m in enumerate(ms):
                new_moments[j].append(_cast(m, state_i[j].dtype))
        state = make_state(
            count=count,
            hyperparams=stored,
            scheduled=scheduled,
            overridden=state.overridden,
            **{m: jax.tree_util.tree_unflatten(treedef, ms) for m, ms in zip(moments, new_moments)},
        )
        return jax.tree_util.tree_unflatten(treedef, updates), state

    return Optimizer(init, update)


def _check_moments(owner: str, state: Any, moments: Sequence[str], grads: Any) -> None:
    """The state keeps exactly this configuration's moments, shaped like ``grads``."""
    kept = set(moments)
    for field in state._fields:
        if field in ("count", "hyperparams", "scheduled", "overridden"):
            continue
        value = getattr(state, field)
        if field not in kept and not (type(value) is tuple and not value):
            raise ValueError(
                f"{owner}.update: the state keeps a {field} moment, which {owner} built with "
                f"these options does not (it keeps {', '.join(moments) or 'no moments'}); the "
                "state was made by an optimizer with other options (e.g. rmsprop(centered="
                "True) vs centered=False). Re-initialize it with this optimizer's init."
            )
    for i, moment in enumerate(moments):
        value = getattr(state, moment)
        if type(value) is tuple and not value and jax.tree_util.tree_leaves(grads):
            raise ValueError(
                f"{owner}.update: the state has no {moment} moment, which {owner} built with "
                "these options keeps; the state was made by an optimizer with other options. "
                "Re-initialize it with this optimizer's init."
            )
        if i == 0 or (jax.tree_util.tree_structure(value)
                      != jax.tree_util.tree_structure(getattr(state, moments[0]))):
            check_same_structure(f"{owner}.update", "grads", grads, "the optimizer state", value)


# --------------------------------------------------------------------------- apply and chain


def apply_updates(params: Params, updates: Updates) -> Params:
    """Adds updates to params leaf by leaf, keeping each param's dtype: p ← p + u.

    Example:
        >>> params = optimizers.apply_updates(params, updates)
    """
    check_same_structure("apply_updates", "updates", updates, "params", params)

    def apply(p, u):
        stepped = _fused.recall(p, u)  # the new param a one-pass kernel already computed
        return stepped if stepped is not None else jnp.asarray(p + u).astype(jnp.result_type(p))

    return jax.tree_util.tree_map(apply, params, updates)


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

    def update(grads: Updates, state: tuple, params: Params = None, **extra) -> tuple:
        if type(state) is not tuple or len(state) != len(transforms):
            raise TypeError(
                f"chain.update: state must be the tuple of {len(transforms)} link states returned "
                f"by chain(...).init(params); got {type(state).__name__}."
            )
        new_state = []
        for tx, link_state in zip(transforms, state):
            grads, link_state = tx.update(grads, link_state, params, **extra)
            new_state.append(link_state)
        return grads, tuple(new_state)

    return Optimizer(init, update)
