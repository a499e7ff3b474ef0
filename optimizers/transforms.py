"""Building blocks that transform gradients: clipping and L2 weight decay."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _sums, _vma
from ._base import Optimizer
from ._rule import from_rule


class TransformState(NamedTuple):
    count: jax.Array
    hyperparams: dict
    scheduled: dict
    overridden: dict  # name -> bool: set with set_hyperparams (then it wins in update)


def global_norm(tree: Any) -> jax.Array:
    """‖g‖ = √(Σ over all leaves and elements of g²), accumulated in float32 or wider.

    Inside ``jax.shard_map`` it is the norm of the whole tree, the same on every
    device: a leaf that varies over mesh axes (e.g. passed with ``P('d')``) is one
    block of an array split over them, so its Σg² is summed over those axes
    (``psum``); a replicated leaf is counted once. (With ``check_vma=False`` JAX
    does not record which leaves vary: the norm is then the local blocks'.)

    Example:
        >>> optimizers.global_norm({"w": jnp.ones(4), "b": jnp.ones(5)})   # 3.0
    """
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    dtype = jnp.result_type(*[jnp.promote_types(jnp.result_type(x), jnp.float32) for x in leaves])
    # few reductions, however many leaves: small ones are concatenated first (_sums)
    squares = _sums.square_sums(leaves, dtype)
    return jnp.sqrt(sum(_vma.psum_varying(s) for s in squares))


def clip_by_global_norm(max_norm: Any) -> Optimizer:
    """Rescales all gradients together so that their global norm is at most ``max_norm``.

    Update: g ← g · min(1, c / ‖g‖), with ‖g‖ the norm over every leaf
    (:func:`global_norm`; inside ``jax.shard_map`` that of the whole, unsharded
    tree, so every device scales by the same factor as one device would).

    Args:
      max_norm: c > 0, a number or a schedule.

    Example:
        >>> tx = optimizers.chain(optimizers.clip_by_global_norm(1.0), optimizers.sgd(0.1))
    """

    def rule(count, max_norm, norm):
        scale = jnp.where(norm > max_norm, max_norm / norm, 1)
        return lambda g, p: (g * scale, ())

    return from_rule(
        "clip_by_global_norm", rule, TransformState, {"max_norm": max_norm},
        reduce=lambda leaves: {"norm": global_norm(leaves)},
    )


def clip(max_delta: Any) -> Optimizer:
    """Clips every gradient element to [−c, c].

    Update: g ← min(max(g, −c), c).

    Args:
      max_delta: c > 0, a number or a schedule.

    Example:
        >>> tx = optimizers.chain(optimizers.clip(1.0), optimizers.sgd(0.1))
    """

    def rule(count, max_delta):
        return lambda g, p: (jnp.clip(g, -max_delta, max_delta), ())

    return from_rule("clip", rule, TransformState, {"max_delta": max_delta})


def add_decayed_weights(weight_decay: Any = 1e-4, mask: Any = None) -> Optimizer:
    """Adds L2 weight decay to the gradients (coupled decay).

    Update: g ← g + λ p on the leaves where ``mask`` is True. Followed by
    ``sgd(η)`` this is the gradient of L + (λ/2)‖p‖².

    Args:
      weight_decay: λ ≥ 0, a number or a schedule.
      mask: pytree of bools, or a function ``params -> pytree of bools``
        (default: every leaf decays).

    Example:
        >>> tx = optimizers.chain(optimizers.add_decayed_weights(1e-4), optimizers.sgd(0.1))
    """

    def rule(count, weight_decay):
        return lambda g, p: (g + weight_decay * p, ())

    return from_rule(
        "add_decayed_weights", rule, TransformState, {"weight_decay": weight_decay},
        needs_params=True, mask=mask, masked=("weight_decay",),
    )
