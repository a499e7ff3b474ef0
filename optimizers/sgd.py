"""Stochastic gradient descent, with and without (Nesterov) momentum."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from . import _fused, _multi
from ._base import Optimizer
from ._rule import from_rule


class SgdState(NamedTuple):
    count: jax.Array
    hyperparams: dict
    scheduled: dict
    overridden: dict  # name -> bool: set with set_hyperparams (then it wins in update)


class MomentumState(NamedTuple):
    count: jax.Array
    velocity: Any
    hyperparams: dict
    scheduled: dict
    overridden: dict  # name -> bool: set with set_hyperparams (then it wins in update)


def sgd(learning_rate: Any = 0.01) -> Optimizer:
    """Plain gradient descent.

    Update: p ← p − η g.

    Args:
      learning_rate: η ≥ 0, a number or a schedule ``step -> η``.

    Example:
        >>> tx = optimizers.sgd(0.1)   # J = x² + 2y² from (−3, −3): J < 0.005 after 17 steps
    """

    def rule(count, learning_rate):
        return lambda g, p: (-learning_rate * g, ())

    return from_rule("sgd", rule, SgdState, {"learning_rate": learning_rate})


def momentum(
    learning_rate: Any = 0.01, momentum: Any = 0.9, nesterov: bool = False,
    moment_dtype: Any = None,
) -> Optimizer:
    """Gradient descent with momentum (heavy ball), optionally Nesterov's.

    Update: v ← μ v + g;  p ← p − η v.
    Nesterov: v ← μ v + g;  p ← p − η (g + μ v), with the new v.

    With a constant η this is the source texts' v ← μ v − η g; p ← p + v (their
    v is −η times ours), and it matches ``torch.optim.SGD(momentum=μ, nesterov=…)``
    and ``optax.sgd(η, momentum=μ, nesterov=…)``.

    Args:
      learning_rate: η ≥ 0, a number or a schedule.
      momentum: μ in [0, 1), a number or a schedule.
      nesterov: use Nesterov's look-ahead form.
      moment_dtype: dtype of v (default: the param dtype, at least float32).

    Example:
        >>> tx = optimizers.momentum(0.01, momentum=0.9, nesterov=True)
    """
    if not isinstance(nesterov, bool):
        raise TypeError(f"momentum: nesterov must be a bool; got {nesterov!r}.")

    def rule(count, learning_rate, momentum):
        def leaf(g, p, velocity):
            velocity = momentum * velocity + g
            direction = g + momentum * velocity if nesterov else velocity
            return -learning_rate * direction, (velocity,)
        return leaf

    return from_rule(
        "momentum", rule, MomentumState,
        {"learning_rate": learning_rate, "momentum": momentum},
        moments=("velocity",), moment_dtype=moment_dtype,
        fused=(lambda count, learning_rate, momentum:
               _fused.momentum_coefficients(momentum, learning_rate, nesterov),
               _multi.momentum_multi),
    )
