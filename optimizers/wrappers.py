"""Wrappers that change when or where an optimizer acts: masks, NaN skipping, accumulation."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _mask, _sums, _vma
from ._base import (
    Optimizer,
    apply_updates,
    check_optimizer,
    check_same_structure,
    compute_dtype,
    mask_leaves,
    safe_increment,
    step,
)
from .hyperparams import _owners


class MaskedState(NamedTuple):
    inner: Any


class SkipNonfiniteState(NamedTuple):
    inner: Any
    skipped: jax.Array  # number of steps skipped so far
    last_finite: jax.Array  # whether the last step's gradients were all finite


class SwitchState(NamedTuple):
    index: jax.Array  # which optimizer acts: data, so changing it does not recompile
    states: tuple


class AccumulateState(NamedTuple):
    inner: Any
    grad_sum: Any
    mini_step: jax.Array  # gradients summed since the last inner update


def _check_state(owner: str, state: Any, state_type: type) -> None:
    if not isinstance(state, state_type):
        raise TypeError(f"{owner}.update: state must be the {state_type.__name__} returned by "
                        f"{owner}(...).init(params); got {type(state).__name__}.")


def _applies_learning_rate(state: Any) -> bool:
    """Whether a wrapped state belongs to an optimizer that applies −η itself: some state in
    it holds a ``learning_rate`` (a gradient transform such as clipping or decay has none)."""
    return any("learning_rate" in {**owner.hyperparams, **owner.scheduled}
               for _, owner in _owners(state))


def masked(tx: Optimizer, mask: Any) -> Optimizer:
    """Applies ``tx`` only to the leaves where ``mask`` is True.

    To freeze params, or to give groups of params their own optimizers or
    learning rates, use :func:`optimizers.partition` with
    :func:`optimizers.freeze` (e.g. ``partition({"frozen": freeze(), "train":
    adam(1e-3)}, labels)``): the documented way, which keeps no state for the
    frozen leaves and names each group's hyperparameters. ``masked`` is for
    applying a transform (clipping, decay) to some leaves inside a chain.

    Update, where the mask is True: u = tx(g). Where it is False:

    * u = g (passed through) when ``tx`` is a gradient transform, one with no
      learning rate (clipping, ``add_decayed_weights``): a chain's later
      optimizer then steps those leaves as usual (optax's ``masked`` does the same);
    * u = 0 when ``tx`` is an optimizer that applies −η itself, i.e. its state
      holds a ``learning_rate`` (``adam``, ``sgd``, a chain ending in one):
      passing g through would make ``apply_updates`` do p + g, a step *up* the
      gradient with rate 1. Those leaves do not move (optax's ``masked`` would
      pass g through).

    ``tx`` keeps state only for the selected leaves; it sees the user's tree with
    an empty :class:`MaskedNode` in place of the others (``None`` leaves stay
    ``None``), so a mask written for the user's params also fits a ``masked``
    nested inside another. A mask is a pytree of bools, or a function
    ``params -> pytree of bools``, read as a prefix of the params tree (one bool
    may stand for a whole subtree). An object whose leaves are all bools is a
    tree even if it is callable (e.g. an Equinox module of bools).

    Args:
      tx: the transform or optimizer to apply.
      mask: pytree of bools, or a function ``params -> pytree of bools``.

    Example:
        >>> is_weight = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
        >>> decay = optimizers.masked(optimizers.add_decayed_weights(1e-4), is_weight)
        >>> tx = optimizers.chain(decay, optimizers.sgd(0.1))
    """
    check_optimizer("masked", "tx", tx)

    def init(params):
        return MaskedState(tx.init(_mask.select(params, mask_leaves("masked", mask, params))))

    def update(grads, state, params=None, **extra):
        _check_state("masked", state, MaskedState)
        if params is not None:
            check_same_structure("masked.update", "grads", grads, "params", params)
        keep = mask_leaves("masked", mask, params if params is not None else grads)
        inner_params = None if params is None else _mask.select(params, keep)
        inner_updates, inner = tx.update(_mask.select(grads, keep), state.inner, inner_params,
                                         **extra)
        chosen = iter(jax.tree_util.tree_leaves(inner_updates))
        freeze = _applies_learning_rate(state.inner)
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        merged = [next(chosen) if k else jnp.full_like(g, -0.0) if freeze else g
                  for g, k in zip(leaves, keep)]
        return jax.tree_util.tree_unflatten(treedef, merged), MaskedState(inner)

    def masked_step(grads, state, params, **extra):
        # tx steps its leaves; the others stay (an optimizer) or get p + g (a transform),
        # as update + apply_updates would give them
        _check_state("masked", state, MaskedState)
        check_same_structure("masked.step", "grads", grads, "params", params)
        keep = mask_leaves("masked", mask, params)
        inner_params, inner = step(tx, _mask.select(grads, keep), state.inner,
                                   _mask.select(params, keep), **extra)
        chosen = iter(jax.tree_util.tree_leaves(inner_params))
        freeze = _applies_learning_rate(state.inner)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        merged = [next(chosen) if k else p if freeze else apply_updates(p, g)
                  for p, g, k in zip(leaves, treedef.flatten_up_to(grads), keep)]
        return jax.tree_util.tree_unflatten(treedef, merged), MaskedState(inner)

    return Optimizer(init, update, masked_step)


def _zeros(shapes: Any) -> Any:
    """Zero updates shaped like ``jax.eval_shape``'s result: the branch of a cond that skips."""
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.array(True)
    # x · 0 is 0 for finite x and NaN for NaN and ±inf: a fused reduction reads the
    # gradient once (all(isfinite(x)) first writes a boolean array, and runs 2x slower);
    # few reductions, over the thread pool for float32 leaves on the CPU (_sums)
    return jnp.isfinite(sum(_sums.zero_sums(leaves)))


def skip_nonfinite(tx: Optimizer) -> Optimizer:
    """Skips steps whose gradients hold a NaN or an infinity, and counts them.

    Update: if every gradient element is finite, (u, s) = tx.update(g, s);
    otherwise u = 0 and the state s is kept as it was (only ``skipped`` grows).
    Params and optimizer state are therefore never touched by a NaN/Inf gradient.
    Inside ``jax.shard_map``, where each device holds a block of the gradients, the
    test covers every block (a scalar all-reduce over the mesh's manual axes): all
    devices skip together, so they keep one step count and state.

    Example:
        >>> tx = optimizers.skip_nonfinite(optimizers.adam(1e-3))
        >>> state.skipped   # steps skipped so far
    """
    check_optimizer("skip_nonfinite", "tx", tx)

    def init(params):
        return SkipNonfiniteState(tx.init(params), jnp.zeros((), jnp.int32), jnp.array(True))

    def update(grads, state, params=None, **extra):
        _check_state("skip_nonfinite", state, SkipNonfiniteState)
        # Inside shard_map each device sees its block of the gradients: every device
        # skips if any block is non-finite, so all keep the same step and state.
        finite = _vma.all_devices(_all_finite(grads))

        def apply(_):
            return tx.update(grads, state.inner, params, **extra)

        shapes = jax.eval_shape(apply, None)

        def skip(_):
            return _zeros(shapes[0]), state.inner

        branches = _vma.join_branches([skip, apply], None, (grads, state, params))
        updates, inner = jax.lax.cond(finite, branches[1], branches[0], None)
        skipped = jnp.where(finite, state.skipped, safe_increment(state.skipped))
        return updates, SkipNonfiniteState(inner, skipped, finite)

    def skip_step(grads, state, params, **extra):
        # the same choice around tx's own step: no update tree is made, and the skipped
        # branch hands back params and state as they were
        _check_state("skip_nonfinite", state, SkipNonfiniteState)
        finite = _vma.all_devices(_all_finite(grads))

        # params and state go in as the operand, in the order they come out, so that XLA
        # steps them in place in the branch that runs (no copies of passed-through buffers)
        def apply(carry):
            return step(tx, grads, carry[1], carry[0], **extra)

        def skip(carry):
            return carry

        carry = (params, state.inner)
        branches = _vma.join_branches([skip, apply], carry, (grads, state, params))
        new_params, inner = jax.lax.cond(finite, branches[1], branches[0], carry)
        skipped = jnp.where(finite, state.skipped, safe_increment(state.skipped))
        return new_params, SkipNonfiniteState(inner, skipped, finite)

    return Optimizer(init, update, skip_step)


def accumulate(tx: Optimizer, every: int) -> Optimizer:
    """Gradient accumulation: one update of ``tx`` every ``every`` calls, with the mean gradient.

    Update: on calls k = 1, …, every − 1 the gradients are summed and u = 0; on
    call ``every``, (u, s) = tx.update(Σg / every, s) and the sum restarts. The
    sum is kept in float32 or wider. Equivalent to ``tx`` on batches ``every``
    times larger.

    Args:
      tx: the optimizer to apply to the accumulated gradient.
      every: k ≥ 1, a Python int.

    Example:
        >>> tx = optimizers.accumulate(optimizers.adam(1e-3), every=4)
    """
    check_optimizer("accumulate", "tx", tx)
    if isinstance(every, bool) or not isinstance(every, int):
        raise TypeError(f"accumulate: every must be a Python int >= 1; got {every!r}.")
    if not 1 <= every <= np.iinfo(np.int32).max:  # the call counter is an int32
        raise ValueError(f"accumulate: every must be an int in [1, 2**31 - 1]; got {every}.")

    def init(params):
        grad_sum = jax.tree_util.tree_map(
            lambda p: jnp.zeros(jnp.shape(p), compute_dtype(jnp.result_type(p))), params)
        return AccumulateState(tx.init(params), grad_sum, jnp.zeros((), jnp.int32))

    def update(grads, state, params=None, **extra):
        _check_state("accumulate", state, AccumulateState)
        check_same_structure("accumulate.update", "grads", grads, "the optimizer state",
                             state.grad_sum)
        grad_sum = jax.tree_util.tree_map(lambda s, g: s + g.astype(s.dtype), state.grad_sum, grads)
        mini_step = state.mini_step + 1

        def apply(_):
            mean = jax.tree_util.tree_map(lambda s, g: (s / every).astype(g.dtype), grad_sum, grads)
            updates, inner = tx.update(mean, state.inner, params, **extra)
            return updates, inner, jax.tree_util.tree_map(jnp.zeros_like, grad_sum)

        shapes = jax.eval_shape(apply, None)

        def wait(_):
            return _zeros(shapes[0]), state.inner, grad_sum

        due = mini_step >= every
        wait, apply = _vma.join_branches([wait, apply], None, (grads, state, params))
        updates, inner, grad_sum = jax.lax.cond(due, apply, wait, None)
        return updates, AccumulateState(inner, grad_sum, jnp.where(due, 0, mini_step))

    def accumulate_step(grads, state, params, **extra):
        # only the every-th call steps (with the mean); the others keep params and state
        _check_state("accumulate", state, AccumulateState)
        check_same_structure("accumulate.step", "grads", grads, "the optimizer state",
                             state.grad_sum)
        mini_step = state.mini_step + 1
        # The cond steps (params, state) with the mean and restarts the count, or passes
        # them through as its false branch (branch 0): the shape of cond for which XLA steps
        # the buffers in place. The sum is updated after it, in one fused pass (zero when
        # the count restarted, else sum + g): reading the cond's count makes it wait for
        # the cond, which reads the old sum. A sum made inside the cond, or updated before
        # it (XLA then keeps a copy of the old sum), cost full-size copies.
        def apply(carry):
            new_params, inner, _ = carry
            mean = jax.tree_util.tree_map(lambda s, g: ((s + g.astype(s.dtype)) / every)
                                          .astype(g.dtype), state.grad_sum, grads)
            new_params, inner = step(tx, mean, inner, new_params, **extra)
            return new_params, inner, jnp.zeros((), jnp.int32)

        def wait(carry):
            return carry

        carry = (params, state.inner, mini_step)
        wait, apply = _vma.join_branches([wait, apply], carry, (grads, state, params))
        new_params, inner, mini_step = jax.lax.cond(mini_step >= every, apply, wait, carry)
        grad_sum = jax.tree_util.tree_map(
            lambda s, g: jnp.where(mini_step == 0, jnp.zeros((), s.dtype), s + g.astype(s.dtype)),
            state.grad_sum, grads)
        return new_params, AccumulateState(inner, grad_sum, mini_step)

    return Optimizer(init, update, accumulate_step)


def switch(*transforms: Optimizer) -> Optimizer:
    """One of several optimizers, chosen by data: ``state.index`` picks the one that acts.

    Update: (u, sᵢ) = transforms[i].update(g, sᵢ) with i = ``state.index``; the
    other states are kept. The choice is an array in the state, so one compiled
    training program serves every optimizer (change it with
    ``state._replace(index=jnp.int32(i))``), and ``jax.vmap`` over states with
    different indices trains models with different optimizers at once. On one
    device only the chosen branch runs (``lax.switch``). An index that names no
    optimizer is an error when it is concrete; a traced one gives NaN updates
    (and keeps every state), never some other optimizer's step.

    Example:
        >>> tx = optimizers.switch(optimizers.sgd(0.1), optimizers.adam(1e-3))
        >>> state = tx.init(params)._replace(index=jnp.int32(1))   # Adam
    """
    if not transforms:
        raise ValueError("switch: needs at least one optimizer.")
    for i, tx in enumerate(transforms):
        check_optimizer("switch", f"argument {i}", tx)

    def init(params):
        return SwitchState(jnp.zeros((), jnp.int32), tuple(tx.init(params) for tx in transforms))

    def update(grads, state, params=None, **extra):
        if not isinstance(state, SwitchState) or len(state.states) != len(transforms):
            raise TypeError(f"switch.update: state must be the SwitchState of {len(transforms)} "
                            "optimizers returned by switch(...).init(params).")
        index = _check_index(state.index, len(transforms))

        def branch(i):
            def run(states):
                updates, new = transforms[i].update(grads, states[i], params, **extra)
                return updates, states[:i] + (new,) + states[i + 1:]
            return run

        shapes = jax.eval_shape(branch(0), state.states)[0]

        def out_of_range(states):  # a traced index not naming an optimizer: NaN, not a guess
            return jax.tree_util.tree_map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype),
                                          shapes), states

        valid = (index >= 0) & (index < len(transforms))
        branches = _vma.join_branches([branch(i) for i in range(len(transforms))]
                                      + [out_of_range], state.states, (grads, state, params))
        updates, states = jax.lax.switch(jnp.where(valid, index, len(transforms)), branches,
                                         state.states)
        return updates, SwitchState(state.index, states)

    def switch_step(grads, state, params, **extra):
        # One lax.cond per optimizer, each stepping (params, its own state) or passing them
        # through: operand and result are the same buffers in the same order, so XLA steps
        # them in place in the branch that runs. One lax.switch over all the states instead
        # makes XLA copy every full-size buffer a branch passes through (measured: 9 copies
        # of an 8M leaf for switch(sgd, adam), 5x the time of adam's step).
        if not isinstance(state, SwitchState) or len(state.states) != len(transforms):
            raise TypeError(f"switch.step: state must be the SwitchState of {len(transforms)} "
                            "optimizers returned by switch(...).init(params).")
        index = _check_index(state.index, len(transforms))
        def out_of_range(params):  # NaN params, as p + NaN updates would give
            return jax.tree_util.tree_map(lambda p: p + jnp.asarray(jnp.nan, p.dtype), params)

        def keep_params(params):
            return params

        # the pass-through as the false branch (branch 0): XLA copied the params twice when
        # it was the true one
        invalid = (index < 0) | (index >= len(transforms))
        keep_params, out_of_range = _vma.join_branches([keep_params, out_of_range], params,
                                                       (grads, state, params))
        params = jax.lax.cond(invalid, out_of_range, keep_params, params)
        states = list(state.states)
        for i, tx in enumerate(transforms):
            def run(carry, tx=tx):
                return step(tx, grads, carry[1], carry[0], **extra)

            def keep(carry):
                return carry

            carry = (params, states[i])
            keep, run = _vma.join_branches([keep, run], carry, (grads, state, params))
            params, states[i] = jax.lax.cond(index == i, run, keep, carry)

        return params, SwitchState(state.index, tuple(states))

    return Optimizer(init, update, switch_step)


def _check_index(index: Any, count: int) -> jax.Array:
    """A switch's index as an int32 array; a concrete one must name one of ``count`` optimizers."""
    if not jnp.issubdtype(jnp.result_type(index), jnp.integer) or jnp.ndim(index) != 0:
        raise TypeError(
            f"switch.update: state.index must be an integer scalar; got "
            f"{jnp.result_type(index)} of shape {jnp.shape(index)}. Set it with "
            "state._replace(index=jnp.int32(i))."
        )
    if not isinstance(index, jax.core.Tracer):
        value = int(np.asarray(index))
        if not 0 <= value < count:
            raise ValueError(
                f"switch.update: state.index must be in [0, {count}) (one per optimizer given "
                f"to switch); got {value}."
            )
    return jnp.asarray(index, jnp.int32)
