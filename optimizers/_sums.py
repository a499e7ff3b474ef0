"""Sums over every element of a tree's leaves in few reductions (global norm, finiteness).

XLA:CPU compiles and runs one reduction per reduced array, each with its own
loop and call overhead. Summed leaf by leaf, a check over 1000 leaves of 1k
elements took 8.2 s to compile and 4.9 ms to run (measured, jitted, 2-core CPU);
with the small leaves concatenated into groups first, 0.55 s and 2.1 ms. So
leaves of at most :data:`SMALL` elements are raveled and concatenated, per
dtype and per set of mesh axes they vary over (inside ``jax.shard_map``), into
groups of at most :data:`GROUP` leaves; larger leaves are reduced where they
are, so a large sharded leaf is never gathered (a small one that happens to be
sharded moves at most ``SMALL`` elements). The concatenation copies only the
small leaves' bytes.

Float32 leaves on the CPU are summed by one kernel call instead
(:func:`squares_and_zeros`, ``FnnSumsF32`` in ``_kernels/steps.cc``): XLA:CPU runs a
reduction on one thread, at a third of the bandwidth that the kernel's pass over
XLA's intra-op thread pool reaches (measured, 10M elements on a 2-core CPU: 3.3–4.4 ms
vs 1.0–1.6 ms), and without the concatenation. Elsewhere, under ``vmap``, for
derivatives or without the kernels it is the same concatenated sums in ``jnp``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import custom_batching
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from . import _native, _vma

SMALL = 4096  # elements: leaves up to this size are concatenated before reducing
GROUP = 128  # leaves per concatenation


def partial_sums(leaves: Sequence, term: Callable, dtype) -> list[jax.Array]:
    """Scalars whose total is Σ over every leaf and element of ``term(x)``, summed in ``dtype``.

    ``term`` is elementwise (e.g. ``jnp.square``, ``lambda x: x * 0``). Each scalar
    covers leaves that vary over the same mesh axes, so inside ``jax.shard_map`` a
    caller can complete each to the whole array's sum with
    :func:`optimizers._vma.psum_varying`.

    Example:
        >>> sum(partial_sums([jnp.ones(3), jnp.ones((2, 2))], jnp.square, jnp.float32))  # 7.0
    """
    sums = []
    groups: dict[tuple, list] = {}
    for x in leaves:
        x = jnp.asarray(x)
        if x.size > SMALL:
            sums.append(jnp.sum(term(x), dtype=dtype))
        else:
            groups.setdefault((x.dtype, _vma.varying_axes(x)), []).append(jnp.ravel(x))
    for group in groups.values():
        for start in range(0, len(group), GROUP):
            part = group[start:start + GROUP]
            flat = part[0] if len(part) == 1 else jnp.concatenate(part)
            sums.append(jnp.sum(term(flat), dtype=dtype))
    return sums


def _reference(*leaves: jax.Array) -> jax.Array:
    """[Σ x², Σ x · 0] over float32 leaves, in jnp (concatenated sums, float32)."""
    if not leaves:
        return jnp.zeros((2,), jnp.float32)
    return jnp.stack([sum(partial_sums(leaves, jnp.square, jnp.float32)),
                      sum(partial_sums(leaves, lambda x: x * 0, jnp.float32))])


_kernel = _native.sums_kernel_call("fnn_sums_f32", _reference)


def _sharded_axes(sharding: jax.sharding.Sharding) -> tuple:
    """The mesh axes an array is split over (its blocks are summed over them)."""
    if sharding.is_fully_replicated:
        return ()
    if not isinstance(sharding, NamedSharding):
        raise NotImplementedError(f"fnn sums: cannot partition over a {type(sharding).__name__}")
    return tuple(axis for entry in sharding.spec if entry is not None
                 for axis in (entry if isinstance(entry, tuple) else (entry,)))


def _partition(mesh, arg_shapes, result_shape):
    # Each device sums its own blocks; leaves split over the same axes are summed by one
    # kernel call and then over those axes (a replicated leaf is counted once).
    axes = [_sharded_axes(a.sharding) for a in arg_shapes]
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(axes):
        groups.setdefault(a, []).append(i)

    def lower(*blocks):
        total = jnp.zeros((2,), jnp.float32)
        for group_axes, members in groups.items():
            part = _kernel(*(blocks[i] for i in members))
            total = total + (jax.lax.psum(part, group_axes) if group_axes else part)
        return total

    replicated = NamedSharding(mesh, PartitionSpec())
    return mesh, lower, replicated, tuple(a.sharding for a in arg_shapes)


def _sharding_rule(mesh, value_types, result_types):
    from jax._src.lib.mlir import ir

    factors = [[f"l{k}d{d}" for d in range(ir.RankedTensorType(t).rank)]
               for k, t in enumerate(value_types)]
    operands = ", ".join(" ".join(f) for f in factors)
    return (f"{operands} -> s", {"reduction_factors": tuple(x for f in factors for x in f)})


_sharded = custom_partitioning(_kernel)
_sharded.def_partition(
    partition=_partition, sharding_rule=_sharding_rule,
    infer_sharding_from_operands=lambda mesh, arg_shapes, result_shape: NamedSharding(
        mesh, PartitionSpec()))


@custom_batching.custom_vmap
def _kernel_or_reference(*leaves):
    return _sharded(*leaves)


@_kernel_or_reference.def_vmap
def _batched(axis_size, in_batched, *leaves):
    # Under vmap each example has its own sums: the jnp formula, batched.
    leaves = [x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
              for x, b in zip(leaves, in_batched)]
    return jax.vmap(_reference)(*leaves), True


@jax.custom_jvp
def _differentiable(*leaves):
    return _kernel_or_reference(*leaves)


_differentiable.defjvp(lambda primals, tangents: jax.jvp(_reference, primals, tangents))


def squares_and_zeros(leaves: Sequence) -> list[jax.Array]:
    """Per set of float32 leaves that vary over the same mesh axes: ``[Σ x², Σ x · 0]``.

    The first entry sums the squares, the second is 0 if every element is finite and
    NaN otherwise. On the CPU one kernel call per set reads each element once, over the
    intra-op thread pool (:mod:`optimizers._sums`); like :func:`partial_sums`, inside
    ``jax.shard_map`` each result covers the local blocks
    (:func:`optimizers._vma.psum_varying` completes it).

    Example:
        >>> squares_and_zeros([jnp.ones(3), jnp.full((2, 2), jnp.nan)])[0]   # [nan, nan]
    """
    groups: dict[frozenset, list] = {}
    for x in leaves:
        if jnp.result_type(x) != jnp.float32:
            raise TypeError(f"squares_and_zeros sums float32 leaves; got {jnp.result_type(x)}")
        groups.setdefault(_vma.varying_axes(x), []).append(jnp.asarray(x))
    sums = _differentiable if _native.enabled() else _reference
    return [sums(*group) for group in groups.values()]


def square_sums(leaves: Sequence, dtype) -> list[jax.Array]:
    """Scalars whose total is Σ x² over every leaf, in ``dtype`` (float32 or wider).

    Float32 leaves summed in float32 go through :func:`squares_and_zeros`, the others
    through :func:`partial_sums`. Each scalar covers leaves that vary alike (complete it
    with :func:`optimizers._vma.psum_varying` inside ``jax.shard_map``).

    Example:
        >>> sum(square_sums([jnp.ones(3), jnp.ones(4, jnp.bfloat16)], jnp.float32))  # 7.0
    """
    kernel, rest = _split(leaves, dtype)
    return ([s[0] for s in squares_and_zeros(kernel)]
            + partial_sums(rest, lambda x: jnp.square(x.astype(dtype)), dtype))


def zero_sums(leaves: Sequence) -> list[jax.Array]:
    """float32 scalars whose total is Σ x · 0 over every leaf: 0 if all are finite, else NaN.

    Example:
        >>> sum(zero_sums([jnp.ones(3), jnp.array([1.0, jnp.inf])]))   # nan
    """
    kernel, rest = _split(leaves, jnp.float32)
    return ([s[1] for s in squares_and_zeros(kernel)]
            + partial_sums(rest, lambda x: x * 0, jnp.float32))


def _split(leaves: Sequence, dtype) -> tuple[list, list]:
    """(float32 leaves the kernel sums in ``dtype``, the others)."""
    kernel, rest = [], []
    for x in leaves:
        use = dtype == jnp.float32 and jnp.result_type(x) == jnp.float32
        (kernel if use else rest).append(x)
    return kernel, rest
