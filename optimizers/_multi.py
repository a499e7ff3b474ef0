"""Multi-tensor one-pass steps: one kernel call steps a whole list of float32 leaves.

Why: XLA:CPU pays ~10 µs per leaf per step for the loops of a per-leaf optimizer
step, and moves each array once per output (see :mod:`optimizers._fused`). A model
of many leaves (a transformer, a ResNet: 100–500 leaves) is stepped here by ONE
custom call (one per :data:`LEAVES_PER_CALL` leaves) that walks every leaf, any
size or shape (scalars and empty leaves included), in place, with the work split
across XLA's intra-op thread pool by bytes (the leaves are cut as one concatenated
range, a chunk may span leaf boundaries), not by leaf. These are the optimizers'
only step kernels: ``optimizers.step`` steps every float32 leaf through them.

Each function takes one coefficient vector for all leaves (the layouts of
:func:`optimizers._fused.adam_coefficients`, :func:`~optimizers._fused.scaled_coefficients`
and :func:`~optimizers._fused.momentum_coefficients`) and one flag per leaf,
``decay_flags``: leaf i decays by ``decay · decay_flags[i]`` (1 where AdamW's
weight decay applies to the leaf, 0 where a mask turns it off; ``None``: all 1).
AdaGrad/RMSProp and Momentum have no decay term, so there the flags (checked to
have one entry per leaf) change nothing; they are accepted so that the three
functions share one signature. Per leaf the kernel computes the jnp formula of
:mod:`optimizers._fused` in float32 (each piece of a call runs the rule's per-range
C++ function, ``AdamRange`` etc., wherever the chunks fall), so, to float32 rounding::

    adam_multi(coef, flags, grads, params, m, v)[k][i] ≈ _fused.adam_reference(
        coef.at[7].multiply(flags[i]), grads[i], params[i], m[i], v[i])[k]

A kernel changes speed, never semantics:

* off the CPU (the kernel primitive's lowering rule for other platforms), under
  ``vmap`` (``custom_vmap``), for derivatives (``custom_jvp``), when the kernels
  cannot be built (one warning) or with ``FNN_FUSED=0``: the ``_fused.*_reference``
  formulas in ``jnp``, leaf by leaf;
* sharded leaves under ``jax.jit`` (``custom_partitioning``): every leaf keeps its
  own sharding and each device steps its local shards of all leaves in one call
  (elementwise, nothing is gathered; the coefficients and flags are replicated);
* inside ``jax.shard_map``: the call steps each device's local blocks, and each
  leaf's arrays are typed as varying over the union of the mesh axes its arrays
  (and the coefficients) vary over (:mod:`optimizers._vma`).

In place: the results alias the params' and moments' buffers; pass them donated
(``jax.jit(..., donate_argnums=...)``), or XLA copies them first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import custom_batching
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from . import _fused, _native, _vma

Leaves = Sequence[jax.Array]

# Leaves per kernel call, the one chunking of the multi-tensor steps (optimizers._rule passes
# whole lists). XLA:CPU's compile cost grows faster than linearly in one call's aliased
# operands, and the step time barely depends on it. Measured (2026-12-03, jitted donated
# optimizers.step of adam, on a loaded 2-core machine, lower + compile, medians): 1000
# leaves × 1k: 32 → 4.35 s, 64 → 3.9 s, 128 → 4.4 s, 256 → 5.1 s (step 51/51/38/35 ms);
# 5000 × 1k: 32 → 58 s, 128 → 38 s, 256 → 116 s; 100 × 100k: 0.26–0.39 s and 15–21 ms
# for all four. Longer lists take ⌈n / LEAVES_PER_CALL⌉ calls.
LEAVES_PER_CALL = 128


def _reference_leaves(reference: Callable, decay_column: int | None, moments: int,
                      coef: jax.Array, flags: jax.Array, arrays: Sequence[jax.Array]) -> tuple:
    """The reference formula leaf by leaf: ``arrays`` = g.., p.., moments.. (n each), any
    leading batch dims shared by coef (…, k), flags (…, n) and every array; returns
    p.., moments.. (n each)."""
    n = flags.shape[-1]
    batch = coef.ndim - 1
    groups = [arrays[a * n:(a + 1) * n] for a in range(2 + moments)]
    results: list[list] = [[] for _ in range(1 + moments)]
    for i in range(n):
        leaf_coef = coef
        if decay_column is not None:
            leaf_coef = coef.at[..., decay_column].multiply(flags[..., i])
        p = groups[1][i]
        if batch:  # (B.., k) -> (B.., 1.., k): broadcasts against the leaf's (B.., *shape)
            leaf_coef = leaf_coef.reshape(
                *coef.shape[:-1], *([1] * (p.ndim - batch)), coef.shape[-1])
        for out, new in zip(results, reference(leaf_coef, *(g[i] for g in groups))):
            out.append(new)
    return tuple(x for out in results for x in out)


def _sharding_rule(mesh, value_types, result_types):
    """Shardy rule: every leaf's arrays share one factor per dimension (elementwise, leaf by
    leaf, each leaf with its own factors); coef and flags are replicated."""
    from jax._src.lib.mlir import ir

    def mapping(t, leaf):
        return " ".join(f"l{leaf}d{d}" for d in range(ir.RankedTensorType(t).rank))

    arrays = value_types[2:]
    n = len(arrays) - len(result_types)  # (2 + moments) · n arrays, (1 + moments) · n results
    operands = ["c", "f"] + [mapping(t, k % n) for k, t in enumerate(arrays)]
    results = [mapping(t, k % n) for k, t in enumerate(result_types)]
    return (f"{', '.join(operands)} -> {', '.join(results)}",
            {"need_replication_factors": ("c", "f")})


def _multi_step(target: str, reference: Callable, moments: int, coefs: int,
                decay_column: int | None) -> Callable:
    """``step(coef, flags, grads, params, *moment_lists) -> (params, *moment_lists)``."""
    outputs = 1 + moments
    kernel = _native.multi_kernel_call(target, lambda coef, flags, *arrays: _reference_leaves(
        reference, decay_column, moments, coef, flags, arrays), outputs)

    def leaves_of(arrays) -> int:
        return len(arrays) // (2 + moments)

    def reference_flat(coef, flags, *arrays):
        return _reference_leaves(reference, decay_column, moments, coef, flags, arrays)

    def fused(coef, flags, *arrays):
        return kernel(coef, flags, *arrays, leaves=leaves_of(arrays))

    # Elementwise leaf by leaf, so on sharded arrays each device steps its own shards:
    # without this rule the partitioner would gather every array onto every device.
    sharded = custom_partitioning(fused)

    def leaf_shardings(arg_shapes):
        n = leaves_of(arg_shapes[2:])
        return [arg_shapes[2 + n + i].sharding for i in range(n)]  # the params'

    def same_sharding(mesh, arg_shapes, result_shape):
        return tuple(leaf_shardings(arg_shapes)) * outputs

    def partition(mesh, arg_shapes, result_shape):
        leaf = tuple(leaf_shardings(arg_shapes))
        replicated = NamedSharding(mesh, PartitionSpec())
        return mesh, fused, leaf * outputs, (replicated, replicated) + leaf * (2 + moments)

    sharded.def_partition(partition=partition, infer_sharding_from_operands=same_sharding,
                          sharding_rule=_sharding_rule)

    # Off the CPU the primitive lowers as the reference formula (its lowering rule is chosen
    # per platform, see _native.multi_kernel_call); no lax.platform_dependent here, which
    # would trace the n-leaf reference at every trace and leave a branch of it for XLA to
    # compile (measured at 1000 leaves: ~8x the trace and ~80x the compile time).
    @custom_batching.custom_vmap
    def kernel_or_reference(coef, flags, *arrays):
        return tuple(sharded(coef, flags, *arrays))

    @kernel_or_reference.def_vmap
    def batched(axis_size, in_batched, coef, flags, *arrays):
        # Under vmap (e.g. many learning rates at once) coefficients differ per model:
        # run the jnp formula, batched, instead of the kernel.
        args = [x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
                for x, b in zip((coef, flags, *arrays), in_batched)]
        out = reference_flat(*args)
        return out, (True,) * len(out)

    @jax.custom_jvp
    def differentiable(coef, flags, *arrays):
        return kernel_or_reference(coef, flags, *arrays)

    differentiable.defjvp(lambda primals, tangents: jax.jvp(reference_flat, primals, tangents))

    def step(coef, decay_flags, grads, params, *moment_lists):
        names = ("grads", "params", *(f"moments[{k}]" for k in range(moments)))
        coef, flags, groups = _checked(target, coefs, coef, decay_flags,
                                       dict(zip(names, (grads, params, *moment_lists))))
        n = len(groups[0])
        if n == 0:
            return tuple([] for _ in range(outputs))
        if not _native.enabled():  # FNN_FUSED=0: the plain formulas, no kernel call at all
            out = reference_flat(coef, flags, *(x for g in groups for x in g))
        else:
            # Inside shard_map every output varies over the manual axes that any of its
            # inputs varies over, and the kernel and reference lowerings must say so: the
            # kernel's results are typed like each leaf's p, so type each leaf's arrays alike.
            shared = _vma.varying_axes(coef) | _vma.varying_axes(flags)
            leaves = [_vma.varying_alike(*(g[i] for g in groups)) for i in range(n)]
            leaves = [tuple(_vma.pvary(x, shared) for x in leaf) for leaf in leaves]
            # Empty leaves have nothing to step: returned as they are (passing them would
            # only make XLA copy empty buffers to satisfy the in-place aliasing).
            live = [i for i in range(n) if leaves[i][1].size]
            live_flags = flags if len(live) == n else jnp.take(flags, jnp.asarray(live, jnp.int32))
            out = [leaf[1 + k] for k in range(outputs) for leaf in leaves]
            for start in range(0, len(live), LEAVES_PER_CALL):
                group = live[start:start + LEAVES_PER_CALL]
                stepped = differentiable(coef, live_flags[start:start + len(group)], *(
                    leaves[i][a] for a in range(2 + moments) for i in group))
                for k in range(outputs):
                    for j, i in enumerate(group):
                        out[k * n + i] = stepped[k * len(group) + j]
        return tuple(list(out[k * n:(k + 1) * n]) for k in range(outputs))

    return step


def _checked(target: str, coefs: int, coef: Any, decay_flags: Any,
             lists: dict[str, Any]) -> tuple[jax.Array, jax.Array, list[list]]:
    """coef (k,) float32, flags (n,) float32 and the leaf lists, or a clear error."""
    name = target.replace("fnn_", "").replace("_f32", "")
    params = lists["params"]
    for what, leaves in lists.items():
        if not isinstance(leaves, (list, tuple)):
            raise TypeError(f"{name}: {what} must be a list or tuple of arrays (one per leaf), "
                            f"got {type(leaves).__name__}")
    for what, leaves in lists.items():
        if len(leaves) != len(params):
            raise ValueError(f"{name}: {what} has {len(leaves)} leaves but params has "
                             f"{len(params)}; pass one array per leaf in each list")
    groups = [[jnp.asarray(x) if not isinstance(x, jax.Array) else x for x in leaves]
              for leaves in lists.values()]
    for i, p in enumerate(groups[1]):
        for what, leaves in zip(lists, groups):
            x = leaves[i]
            if x.dtype != jnp.float32:
                raise TypeError(f"{name}: {what}[{i}] has dtype {x.dtype}; the multi-tensor "
                                "kernels step float32 leaves only (step other dtypes with the "
                                "per-leaf rule)")
            if x.shape != p.shape:
                raise ValueError(f"{name}: {what}[{i}] has shape {x.shape} but params[{i}] has "
                                 f"{p.shape}; a leaf's gradient, param and moments must have "
                                 "one shape")
    coef = jnp.asarray(coef, jnp.float32)
    if coef.shape != (coefs,):
        raise ValueError(f"{name}: coef must have shape ({coefs},) (see optimizers._fused."
                         f"*_coefficients), got {coef.shape}")
    n = len(params)
    flags = (jnp.ones((n,), jnp.float32) if decay_flags is None
             else jnp.asarray(decay_flags, jnp.float32))
    if flags.shape != (n,):
        raise ValueError(f"{name}: decay_flags must have one entry per leaf, shape ({n},), "
                         f"got {flags.shape}")
    return coef, flags, groups


_adam = _multi_step("fnn_adam_multi_f32", _fused.adam_reference, moments=2, coefs=8,
                    decay_column=7)
_scaled = _multi_step("fnn_scaled_multi_f32", _fused.scaled_reference, moments=1, coefs=5,
                      decay_column=None)
_momentum = _multi_step("fnn_momentum_multi_f32", _fused.momentum_reference, moments=1,
                        coefs=3, decay_column=None)


def adam_multi(coef: jax.Array, decay_flags: Any, grads: Leaves, params: Leaves, m: Leaves,
               v: Leaves) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array]]:
    """One Adam/AdamW step of a list of float32 leaves, one kernel call on the CPU.

    Per leaf i, with ``coef = [β₁, 1 − β₁, β₂, 1 − β₂, s, 1/√c₂, ε, d]``
    (:func:`optimizers._fused.adam_coefficients`) and ``dᵢ = d · decay_flags[i]``::

        m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²
        p ← p − s · m / (√v / √c₂ + ε) − dᵢ · p      (no step where the denominator is 0)

    Args:
      coef: the float32 coefficient vector (8,), shared by all leaves.
      decay_flags: (n,) per-leaf multipliers of the decay (1 or 0 for a mask), or None (1).
      grads, params, m, v: lists of n float32 arrays; leaf i has one shape in all four.

    Returns:
      ``(params, m, v)`` new, as lists. Donate params, m and v to step them in place.

    Example:
        >>> coef = _fused.adam_coefficients(jnp.array(1), 1e-3, 0.9, 0.999, 1e-8)
        >>> ps = [jnp.ones(3), jnp.ones((2, 2))]
        >>> zeros = [jnp.zeros_like(p) for p in ps]
        >>> new_p, new_m, new_v = adam_multi(coef, None, ps, ps, zeros, zeros)
    """
    return _adam(coef, decay_flags, grads, params, m, v)


def scaled_multi(coef: jax.Array, decay_flags: Any, grads: Leaves, params: Leaves,
                 s: Leaves) -> tuple[list[jax.Array], list[jax.Array]]:
    """One AdaGrad/RMSProp step of a list of float32 leaves, one kernel call on the CPU.

    Per leaf, with ``coef = [keep, add, η, ε, eps_in_sqrt]``
    (:func:`optimizers._fused.scaled_coefficients`)::

        s ← keep · s + add · g²;  p ← p − η g / (√s + ε)   (eps_in_sqrt: / √(s + ε))

    No decay term: ``decay_flags`` ((n,) or None) is checked and changes nothing.
    Returns ``(params, s)`` new, as lists.

    Example:
        >>> coef = _fused.scaled_coefficients(1.0, 1.0, 0.1, 1e-7, False)
        >>> new_p, new_s = scaled_multi(coef, None, [jnp.ones(3)], [jnp.ones(3)], [jnp.zeros(3)])
    """
    return _scaled(coef, decay_flags, grads, params, s)


def momentum_multi(coef: jax.Array, decay_flags: Any, grads: Leaves, params: Leaves,
                   u: Leaves) -> tuple[list[jax.Array], list[jax.Array]]:
    """One (Nesterov) Momentum step of a list of float32 leaves, one kernel call on the CPU.

    Per leaf, with ``coef = [μ, η, nesterov]`` (:func:`optimizers._fused.momentum_coefficients`)::

        u ← μ u + g;  p ← p − η u   (nesterov: p ← p − η (g + μ u))

    No decay term: ``decay_flags`` ((n,) or None) is checked and changes nothing.
    Returns ``(params, u)`` new, as lists.

    Example:
        >>> coef = _fused.momentum_coefficients(0.9, 0.1, False)
        >>> new_p, new_u = momentum_multi(coef, None, [jnp.ones(3)], [jnp.ones(3)], [jnp.zeros(3)])
    """
    return _momentum(coef, decay_flags, grads, params, u)
