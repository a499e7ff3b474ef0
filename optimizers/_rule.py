"""Lifting a two-level rule to an :class:`Optimizer` over pytrees (see :mod:`optimizers._base`).

:func:`from_rule` has three jobs, one function each: creating the state
(:func:`_make_state`), checking a step's inputs and resolving its scalars once
per tree (:func:`_prepare`), and mapping the rule over the leaves
(:func:`_map_leaves`). Its optimizer has three entry points:

* ``update(grads, state, params) -> (updates, state)``: the rule's exact update
  on every backend, a pure function of its inputs (no kernel, nothing remembered);
* ``step(grads, state, params) -> (params, state)``: owns the parameter write.
  Where the rule has a one-pass kernel (``fused``), the float32 leaves are
  stepped in place by it (:mod:`optimizers._multi`); every other leaf gets
  ``p + update`` as :func:`optimizers.apply_updates` computes it.
  :func:`optimizers.step` calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _fused, _scheduled
from ._base import (
    Optimizer,
    Params,
    State,
    Updates,
    check_float_leaves,
    check_same_structure,
    compute_dtype,
    hyperparam_dtype,
    mask_leaves,
    safe_increment,
    split_hyperparams,
)
from .hyperparams import check_state_matches, used_values


class _Spec(NamedTuple):
    """What ``from_rule`` was given, checked: static for the optimizer's lifetime."""

    name: str
    rule: Callable
    state_type: type
    fixed: dict
    schedules: dict
    peaks: dict  # the settable peaks of the schedules, as data
    moments: tuple
    moment_init: dict
    moment_dtype: Any
    needs_params: bool
    mask: Any
    masked: tuple
    reduce: Callable | None
    fused: tuple | None

    @property
    def own(self) -> dict:
        return {**self.fixed, **self.peaks}


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
      fused: optional ``(coefficients, multi_step)`` of a one-pass multi-tensor kernel
        (:mod:`optimizers._multi`): ``coefficients(count, **hyperparams)`` (float32
        scalars, :mod:`optimizers._fused`) and ``multi_step(coefficients, decay_flags,
        grads, params, *moments) -> (new_params, *new_moments)`` over lists of leaves.
        Only the optimizer's ``step`` uses it, for its float32 leaves; ``update``
        always runs ``rule``.
    """
    fixed, schedules = split_hyperparams(name, hyperparams)
    if moment_dtype is not None and not jnp.issubdtype(moment_dtype, jnp.floating):
        raise TypeError(f"{name}: moment_dtype must be a floating dtype; got {moment_dtype}.")
    spec = _Spec(name, rule, state_type, fixed, schedules, _scheduled.own_peaks(schedules),
                 tuple(moments), dict(moment_init or {}), moment_dtype, needs_params, mask,
                 tuple(masked), reduce, fused)

    def init(params: Params) -> State:
        return _make_state(spec, params)

    def update(grads: Updates, state: State, params: Params = None, **extra) -> tuple:
        del extra  # part of the protocol; rules take no extra arguments
        run = _prepare(spec, grads, state, params, "update")
        updates, new_moments = _map_leaves(spec, run, write=False)
        return run.treedef.unflatten(updates), run.new_state(new_moments)

    def step(grads: Updates, state: State, params: Params, **extra) -> tuple:
        del extra
        if params is None:
            raise ValueError(f"{name}.step needs the params: step(grads, state, params).")
        run = _prepare(spec, grads, state, params, "step")
        new_params, new_moments = _map_leaves(spec, run, write=True)
        return run.treedef.unflatten(new_params), run.new_state(new_moments)

    return Optimizer(init, update, step)


# --------------------------------------------------------------------------- the state


def _make_state(spec: _Spec, params: Params) -> State:
    check_float_leaves(spec.name, params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    dtype = hyperparam_dtype(leaves)
    hyper = {k: jnp.asarray(v, dtype) for k, v in spec.own.items()}
    # A value traced when the state is made (an optimizer built inside jit/vmap from an
    # array) is the state's own data, like a value given to set_hyperparams.
    overridden = {k: jnp.asarray(isinstance(v, jax.core.Tracer)) for k, v in spec.own.items()}
    first = jnp.zeros((), jnp.int32)
    scheduled = {k: jnp.asarray(s(first), dtype) for k, s in spec.schedules.items()}
    values = {**hyper, **scheduled}
    state_moments = {}
    for moment in spec.moments:
        fill = values[spec.moment_init[moment]] if moment in spec.moment_init else 0
        state_moments[moment] = treedef.unflatten([
            jnp.full(jnp.shape(p), fill, spec.moment_dtype or compute_dtype(jnp.result_type(p)))
            for p in leaves])
    return _fill(spec, count=first, hyperparams=hyper, scheduled=scheduled,
                 overridden=overridden, **state_moments)


def _fill(spec: _Spec, **fields) -> State:
    """The state type with ``fields``; fields of moments this configuration lacks hold ()."""
    return spec.state_type(**{**{f: () for f in spec.state_type._fields}, **fields})


# --------------------------------------------------------------------------- checks and scalars


class _Run:
    """One step's inputs, checked, as leaf lists, and its scalars, resolved once per tree."""

    def __init__(self, spec: _Spec, grads: Any, state: Any, params: Any):
        self.spec, self.state = spec, state
        self.g, self.treedef = jax.tree_util.tree_flatten(grads)
        self.p = (self.treedef.flatten_up_to(params) if params is not None
                  else [None] * len(self.g))
        self.m = [self.treedef.flatten_up_to(getattr(state, m)) for m in spec.moments]
        used = {k: s(state.count) for k, s in spec.schedules.items()}
        self.values, self.stored, self.scheduled = used_values(
            state.hyperparams, state.overridden, spec.own, state.scheduled, used)
        self.keep = ([True] * len(self.g) if spec.mask is None else
                     mask_leaves(spec.name, spec.mask, params if params is not None else grads))
        self.count = safe_increment(state.count)
        self.reduced = spec.reduce(self.g) if spec.reduce is not None else {}
        self._cache: dict[tuple, Any] = {}
        self.traced = any(isinstance(x, jax.core.Tracer) for x in (*self.g, *self.p))

    def _hyper(self, dtype: Any, kept: bool) -> dict:
        return {k: _cast(v if kept or k not in self.spec.masked else jnp.zeros_like(v), dtype)
                for k, v in self.values.items()}

    def leaf_fn(self, dtype: Any, kept: bool) -> Callable:
        """The rule's leaf function for this compute dtype and mask value (built once)."""
        key = ("rule", dtype, kept)
        if key not in self._cache:
            extras = {k: _cast(v, dtype) for k, v in self.reduced.items()}
            self._cache[key] = self.spec.rule(self.count, **self._hyper(dtype, kept), **extras)
        return self._cache[key]

    def leaf_call(self, g: Any, p: Any, kept: bool, write: bool) -> Callable:
        """``(g, p, moments) -> (update or new p, new moments)`` for this leaf: the rule in
        the leaf's compute dtype (the dtype policy in :mod:`optimizers._base`). Under a
        trace it is jitted, so it is traced once per leaf shape rather than once per leaf
        (measured, Adam ``update`` at 1000 leaves of 1k: trace + lower 4.5–5.4 s leaf by
        leaf, 1.3–1.8 s so; the compile is the same)."""
        g_dtype = jnp.result_type(g)
        out_dtype = jnp.result_type(p) if p is not None else g_dtype
        dtypes = ("dtypes", g_dtype, out_dtype)
        if dtypes not in self._cache:
            self._cache[dtypes] = compute_dtype(jnp.promote_types(out_dtype, g_dtype))
        dtype = self._cache[dtypes]
        key = ("leaf", dtype, out_dtype, kept, write)
        if key not in self._cache:
            leaf = self.leaf_fn(dtype, kept)  # the scalar work, once, outside the jit

            def body(g, p, state_i):
                u, ms = leaf(_cast(g, dtype), None if p is None else _cast(p, dtype),
                             *[_cast(m, dtype) for m in state_i])
                u = _cast(u, out_dtype)
                out = jnp.asarray(p + u).astype(out_dtype) if write else u
                return out, [_cast(m, jnp.result_type(s)) for m, s in zip(ms, state_i)]

            self._cache[key] = (body, jax.jit(body))
        body, jitted = self._cache[key]
        # Eagerly (no trace) a jit would compile anew at every update: run the body op by op.
        return jitted if self.traced else body

    def coefficients(self, kept: bool) -> jax.Array:
        """The one-pass kernel's float32 scalars for this mask value (built once)."""
        key = ("fused", kept)
        if key not in self._cache:
            self._cache[key] = self.spec.fused[0](self.count, **self._hyper(jnp.float32, kept))
        return self._cache[key]

    def new_state(self, new_moments: list[list]) -> State:
        return _fill(self.spec, count=self.count, hyperparams=self.stored,
                     scheduled=self.scheduled, overridden=self.state.overridden,
                     **{m: self.treedef.unflatten(ms)
                        for m, ms in zip(self.spec.moments, new_moments)})


def _prepare(spec: _Spec, grads: Any, state: Any, params: Any, entry: str) -> _Run:
    name = spec.name
    if not isinstance(state, spec.state_type):
        raise TypeError(
            f"{name}.{entry}: state must be the {spec.state_type.__name__} returned by "
            f"{name}(...).init(params); got {type(state).__name__}."
        )
    check_state_matches(name, state, spec.fixed, spec.schedules)
    _scheduled.check_peaks(name, state, spec.peaks)
    _check_moments(name, state, spec.moments, grads)
    if params is not None:
        check_same_structure(f"{name}.{entry}", "grads", grads, "params", params)
    if spec.needs_params and params is None:
        raise ValueError(f"{name}.update needs the params: call update(grads, state, params).")
    return _Run(spec, grads, state, params)


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


# --------------------------------------------------------------------------- the leaves


def _cast(x: Any, dtype: Any) -> jax.Array:
    """``x`` as ``dtype``, without a conversion op when it already is."""
    x = jnp.asarray(x)
    return x if x.dtype == dtype else x.astype(dtype)


def _map_leaves(spec: _Spec, run: _Run, write: bool) -> tuple[list, list[list]]:
    """The rule over every leaf: (updates, or new params if ``write``; new moments per moment).

    With ``write`` the float32 leaves are stepped in place by the rule's multi-tensor
    kernel (``fused[1]``, :mod:`optimizers._multi`). The other leaves, and all leaves
    without ``write``, run the rule in their compute dtype (the dtype policy in
    :mod:`optimizers._base`).
    """
    n = len(run.g)
    out: list = [None] * n
    new_moments: list[list] = [[None] * n for _ in spec.moments]
    if write and spec.fused is not None:
        _step_together(spec, run, out, new_moments)
    for i, g in enumerate(run.g):
        if out[i] is not None:
            continue
        p, state_i = run.p[i], [m[i] for m in run.m]
        out[i], ms = run.leaf_call(g, p, run.keep[i], write)(g, p, state_i)
        for j, m in enumerate(ms):
            new_moments[j][i] = m
    return out, new_moments


def _step_together(spec: _Spec, run: _Run, out: list, new_moments: list[list]) -> None:
    """Steps every float32 leaf with multi-tensor kernel calls (of
    :data:`optimizers._multi.LEAVES_PER_CALL` leaves each), writing ``out`` and
    ``new_moments`` at their indices. A mask that only turns weight decay off is the
    kernel's per-leaf decay flag; any other masked hyperparameter gets one call per mask
    value."""
    chosen = [i for i, (g, p) in enumerate(zip(run.g, run.p))
              if _fused.eligible(g, p, *(m[i] for m in run.m))]
    if not chosen:
        return
    if set(spec.masked) <= {"weight_decay"}:
        flags = [float(run.keep[i]) for i in chosen]
        calls = [(chosen, True, None if all(flags) else np.asarray(flags, np.float32))]
    else:
        calls = [([i for i in chosen if run.keep[i] == kept], kept, None) for kept in (True, False)]
    for leaves, kept, flags in calls:
        if not leaves:
            continue
        # fused[1] splits the list into calls of _multi.LEAVES_PER_CALL leaves.
        results = spec.fused[1](run.coefficients(kept), flags,
                                [run.g[i] for i in leaves], [run.p[i] for i in leaves],
                                *[[m[i] for i in leaves] for m in run.m])
        for k, i in enumerate(leaves):
            out[i] = results[0][k]
            for j in range(len(spec.moments)):
                new_moments[j][i] = results[1 + j][k]
