"""Scale-free building blocks: preconditioners, momentum, trust ratio and the learning rate.

Each is a rule lifted by :func:`optimizers.from_rule` (the same dtype policy,
validation and hyperparameters-as-data as the named optimizers) and none
applies −η except :func:`scale_by_learning_rate`, so they compose with
:func:`optimizers.chain`::

    adam = chain(scale_by_adam(), scale_by_learning_rate(1e-3))    # = optimizers.adam(1e-3)
    lamb = chain(scale_by_adam(eps=1e-6), add_decayed_weights(0.01),
                 scale_by_trust_ratio(), scale_by_learning_rate(1e-3))

The named optimizers (``adam``, ``momentum``, …) are not built from these: they
keep their one-pass CPU kernels. The chains give the same numbers to float rounding.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._base import Optimizer
from ._fused import divide_or_zero, rsqrt_or_zero
from ._rule import from_rule
from .packing import Packed
from .transforms import TransformState


class ScaleByAdamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict
    scheduled: dict
    overridden: dict  # name -> bool: set with set_hyperparams (then it wins in update)


class ScaleByRmsState(NamedTuple):
    count: jax.Array
    mean_square: Any
    hyperparams: dict
    scheduled: dict
    overridden: dict


class ScaleByMomentumState(NamedTuple):
    count: jax.Array
    velocity: Any
    hyperparams: dict
    scheduled: dict
    overridden: dict


class ScaleByLionState(NamedTuple):
    count: jax.Array
    mu: Any
    hyperparams: dict
    scheduled: dict
    overridden: dict


def _check_flag(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool (True or False); got {value!r}.")


def scale_by_adam(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, eps_root: Any = 0.0,
                  moment_dtype: Any = None) -> Optimizer:
    """Adam's preconditioner, without the learning rate.

    Update: m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²;
    m̂ = m / (1 − β₁ᵗ);  v̂ = v / (1 − β₂ᵗ);  u = m̂ / (√(v̂ + ε_root) + ε)
    (0 where the denominator is 0). ``optax.scale_by_adam`` with the same
    arguments; followed by ``scale_by_learning_rate(η)`` it is ``adam(η)``.

    Args:
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε ≥ 0, outside the root.
      eps_root: ε_root ≥ 0, inside the root (keeps derivatives through the step finite).
      moment_dtype: dtype of m and v (default: the param dtype, at least float32).

    Example:
        >>> tx = optimizers.chain(optimizers.scale_by_adam(),
        ...                       optimizers.scale_by_learning_rate(1e-3))
    """

    def rule(count, b1, b2, eps, eps_root):
        t = count.astype(b1.dtype)
        correction1, correction2 = 1 - b1**t, 1 - b2**t
        keep1, keep2 = 1 - b1, 1 - b2

        def leaf(g, p, mu, nu):
            mu = b1 * mu + keep1 * g
            nu = b2 * nu + keep2 * g * g
            return divide_or_zero(mu / correction1,
                                  jnp.sqrt(nu / correction2 + eps_root) + eps), (mu, nu)
        return leaf

    return from_rule("scale_by_adam", rule, ScaleByAdamState,
                     {"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root},
                     moments=("mu", "nu"), moment_dtype=moment_dtype)


def scale_by_rms(decay: Any = 0.99, eps: Any = 1e-8, eps_in_sqrt: bool = False,
                 moment_dtype: Any = None) -> Optimizer:
    """RMSProp's preconditioner, without the learning rate.

    Update: s ← ρ s + (1 − ρ) g²;  u = g / (√s + ε)  (``eps_in_sqrt``: u = g / √(s + ε));
    0 where the denominator is 0. Followed by ``scale_by_learning_rate(η)`` it is
    ``rmsprop(η, decay, eps, eps_in_sqrt=…)``; ``scale_by_rms(0.9, eps_in_sqrt=True)``
    is ``optax.scale_by_rms()``.

    Args:
      decay: ρ in [0, 1).
      eps: ε ≥ 0.
      eps_in_sqrt: put ε inside the square root.
      moment_dtype: dtype of s (default: the param dtype, at least float32).

    Example:
        >>> tx = optimizers.chain(optimizers.scale_by_rms(0.9),
        ...                       optimizers.scale_by_learning_rate(1e-3))
    """
    _check_flag("scale_by_rms", "eps_in_sqrt", eps_in_sqrt)

    def rule(count, decay, eps):
        keep = 1 - decay

        def leaf(g, p, mean_square):
            mean_square = decay * mean_square + keep * g * g
            if eps_in_sqrt:
                return g * rsqrt_or_zero(mean_square + eps), (mean_square,)
            return divide_or_zero(g, jnp.sqrt(mean_square) + eps), (mean_square,)
        return leaf

    return from_rule("scale_by_rms", rule, ScaleByRmsState, {"decay": decay, "eps": eps},
                     moments=("mean_square",), moment_dtype=moment_dtype)


def scale_by_momentum(momentum: Any = 0.9, nesterov: bool = False,
                      moment_dtype: Any = None) -> Optimizer:
    """Heavy-ball momentum (a trace of the gradients), without the learning rate.

    Update: v ← μ v + g;  u = v  (Nesterov: u = g + μ v, with the new v).
    ``optax.trace(μ, nesterov)``; followed by ``scale_by_learning_rate(η)`` it is
    ``momentum(η, μ, nesterov)``.

    Args:
      momentum: μ in [0, 1).
      nesterov: use Nesterov's look-ahead form.
      moment_dtype: dtype of v (default: the param dtype, at least float32).

    Example:
        >>> tx = optimizers.chain(optimizers.scale_by_momentum(0.9),
        ...                       optimizers.scale_by_learning_rate(0.01))
    """
    _check_flag("scale_by_momentum", "nesterov", nesterov)

    def rule(count, momentum):
        def leaf(g, p, velocity):
            velocity = momentum * velocity + g
            return (g + momentum * velocity if nesterov else velocity), (velocity,)
        return leaf

    return from_rule("scale_by_momentum", rule, ScaleByMomentumState, {"momentum": momentum},
                     moments=("velocity",), moment_dtype=moment_dtype)


def scale_by_lion(b1: Any = 0.9, b2: Any = 0.99, moment_dtype: Any = None) -> Optimizer:
    """Lion's sign of an interpolated momentum, without the learning rate (Chen et al. 2023).

    Update: u = sign(β₁ m + (1 − β₁) g);  m ← β₂ m + (1 − β₂) g  (u uses the old m).
    The update and the moment use different rates, so this is its own rule, not
    ``scale_by_momentum`` followed by a sign. ``optax.scale_by_lion(b1, b2)``.

    Args:
      b1: β₁ in [0, 1), the interpolation of the update.
      b2: β₂ in [0, 1), the decay of the moment.
      moment_dtype: dtype of m (default: the param dtype, at least float32).

    Example:
        >>> tx = optimizers.chain(optimizers.scale_by_lion(),
        ...                       optimizers.scale_by_learning_rate(1e-4))
    """

    def rule(count, b1, b2):
        keep1, keep2 = 1 - b1, 1 - b2

        def leaf(g, p, mu):
            return jnp.sign(b1 * mu + keep1 * g), (b2 * mu + keep2 * g,)
        return leaf

    return from_rule("scale_by_lion", rule, ScaleByLionState, {"b1": b1, "b2": b2},
                     moments=("mu",), moment_dtype=moment_dtype)


def scale(step_size: Any) -> Optimizer:
    """Multiplies the updates by a number: u = s · g.

    Args:
      step_size: s, any finite number (negative to descend), or a schedule.

    Example:
        >>> tx = optimizers.chain(optimizers.scale_by_adam(), optimizers.scale(-1e-3))
    """

    def rule(count, step_size):
        return lambda g, p: (step_size * g, ())

    return from_rule("scale", rule, TransformState, {"step_size": step_size})


def scale_by_learning_rate(learning_rate: Any) -> Optimizer:
    """Descends: u = −η g, with η a learning rate kept in the state as data.

    The last link of a chain of scale-free blocks. Like the named optimizers,
    its state holds ``learning_rate`` (readable and settable with
    :func:`optimizers.hyperparams` / :func:`optimizers.set_hyperparams`), and
    ``masked`` treats it as an optimizer that applies −η (frozen, not passed
    through, where the mask is False). ``optax.scale_by_learning_rate(η)``.

    Args:
      learning_rate: η ≥ 0, a number or a schedule ``step -> η``.

    Example:
        >>> tx = optimizers.chain(optimizers.scale_by_adam(),
        ...                       optimizers.scale_by_learning_rate(1e-3))
    """

    def rule(count, learning_rate):
        return lambda g, p: (-learning_rate * g, ())

    return from_rule("scale_by_learning_rate", rule, TransformState,
                     {"learning_rate": learning_rate})


def _norm(x: jax.Array) -> jax.Array:
    """‖x‖₂ over the whole array, with a finite derivative at 0."""
    squares = jnp.sum(x * x)
    positive = squares > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1)), 0)


def scale_by_trust_ratio(min_norm: Any = 0.0, trust_coefficient: Any = 1.0) -> Optimizer:
    """Scales each leaf's update by its trust ratio ‖p‖ / ‖u‖ (LARS, LAMB).

    Update, per leaf: n_p = max(‖p‖, m), n_u = max(‖g‖, m) (m = ``min_norm``);
    u = g · c n_p / n_u, and u = g where n_p = 0 or n_u = 0 (a zero param or a
    zero update keeps its update: optax's convention). ``optax.scale_by_trust_ratio``.

    The norms are per leaf, so packed params work only when every buffer holds
    one leaf; otherwise ``update`` raises an error.

    Args:
      min_norm: m ≥ 0.
      trust_coefficient: c ≥ 0.

    Example:
        >>> tx = optimizers.chain(optimizers.scale_by_adam(), optimizers.scale_by_trust_ratio(),
        ...                       optimizers.scale_by_learning_rate(1e-3))
    """

    def rule(count, min_norm, trust_coefficient):
        def leaf(g, p):
            p_norm = jnp.maximum(_norm(p), min_norm)
            u_norm = jnp.maximum(_norm(g), min_norm)
            zero = (p_norm == 0) | (u_norm == 0)
            ratio = trust_coefficient * p_norm / jnp.where(zero, 1, u_norm)
            return g * jnp.where(zero, 1, ratio), ()
        return leaf

    tx = from_rule("scale_by_trust_ratio", rule, TransformState,
                   {"min_norm": min_norm, "trust_coefficient": trust_coefficient},
                   needs_params=True)

    def update(grads, state, params=None, **extra):
        check_one_leaf_per_buffer("scale_by_trust_ratio", grads)
        return tx.update(grads, state, params, **extra)

    return Optimizer(tx.init, update)


def check_one_leaf_per_buffer(owner: str, tree: Any) -> None:
    """Raises ValueError if ``tree`` is packed with several leaves in one (used) buffer: a
    rule that reduces over each leaf would reduce over the whole buffer instead."""
    if not isinstance(tree, Packed):
        return
    counts: dict[str, int] = {}
    for slot in tree.layout.slots:
        counts[slot.group] = counts.get(slot.group, 0) + 1
    for name, count in counts.items():
        if count > 1 and jax.tree_util.tree_leaves(tree.buffers[name]):
            raise ValueError(
                f"{owner}: computes one norm per leaf, but packed buffer {name!r} holds {count} "
                "leaves, so its norm would mix them. Use it on unpacked params (LAMB and LARS "
                "gain little from packing), or pack one leaf per buffer: optimizers.pack("
                "params, group=lambda path, leaf: jax.tree_util.keystr(path))."
            )
