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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from . import _vma

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
