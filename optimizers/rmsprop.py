"""RMSProp: gradients divided by a running root mean square."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _fused, _multi, _validate
from ._base import Optimizer
from ._fused import divide_or_zero, rsqrt_or_zero
from ._rule import from_rule


class RmspropState(NamedTuple):
    count: jax.Array
    mean_square: Any
    mean_grad: Any  # centered only, else ()
    trace: Any  # momentum > 0 only, else ()
    hyperparams: dict
    scheduled: dict
    overridden: dict  # name -> bool: set with set_hyperparams (then it wins in update)


def rmsprop(
    learning_rate: Any = 0.01, decay: Any = 0.99, eps: Any = 1e-8, centered: bool = False,
    momentum: Any = 0.0, eps_in_sqrt: bool = False, moment_dtype: Any = None,
) -> Optimizer:
    """RMSProp (Tieleman & Hinton 2012).

    Update: s ← ρ s + (1 − ρ) g²;  d = √s + ε;  p ← p − η g / d.
    Centered: a ← ρ a + (1 − ρ) g;  d = √max(s − a², 0) + ε (the max only guards rounding).
    Momentum μ > 0: b ← μ b + g / d;  p ← p − η b.
    With ``eps_in_sqrt=True``: d = √(s + ε) (or √(s − a² + ε)).

    The defaults (ρ = 0.99, ε = 1e-8 outside the root) match
    ``torch.optim.RMSprop``; ``optax.rmsprop`` (ρ = 0.9, ε inside the root) is
    ``rmsprop(η, decay=0.9, eps_in_sqrt=True)``. A ``momentum`` that is a
    concrete 0 keeps no momentum buffer (and is then not a settable
    hyperparameter); any other value, array or schedule keeps one.

    Args:
      learning_rate: η ≥ 0, a number or a schedule.
      decay: ρ in [0, 1).
      eps: ε ≥ 0; where the denominator d is 0 (ε = 0 and zero gradients, or a zero
        centered variance) the update is 0, not 0/0.
      centered: normalize by the variance estimate s − a² instead of s.
      momentum: μ in [0, 1).
      eps_in_sqrt: put ε inside the square root.
      moment_dtype: dtype of s, a and b (default: the param dtype, at least float32).

    Example:
        >>> tx = optimizers.rmsprop(1e-3, decay=0.9, centered=True)
    """
    for flag, value in (("centered", centered), ("eps_in_sqrt", eps_in_sqrt)):
        if not isinstance(value, bool):
            raise TypeError(f"rmsprop: {flag} must be a bool; got {value!r}.")
    _validate.check("rmsprop", "momentum", momentum)
    use_momentum = _validate.is_schedule(momentum) or isinstance(momentum, jax.core.Tracer) or (
        float(momentum) != 0.0)
    moments = ("mean_square",) + (("mean_grad",) if centered else ()) + (
        ("trace",) if use_momentum else ())
    hyperparams = {"learning_rate": learning_rate, "decay": decay, "eps": eps}
    if use_momentum:
        hyperparams["momentum"] = momentum

    def rule(count, learning_rate, decay, eps, momentum=None):
        keep = 1 - decay

        def leaf(g, p, mean_square, *rest):
            rest = list(rest)
            mean_square = decay * mean_square + keep * g * g
            variance = mean_square
            new = [mean_square]
            if centered:
                mean_grad = decay * rest.pop(0) + keep * g
                # ≥ 0 in exact arithmetic; rounding (low-precision moments) can make it negative
                variance = jnp.maximum(mean_square - mean_grad * mean_grad, 0)
                new.append(mean_grad)
            if eps_in_sqrt:
                scaled = g * rsqrt_or_zero(variance + eps)
            else:
                scaled = divide_or_zero(g, jnp.sqrt(variance) + eps)
            if use_momentum:
                scaled = momentum * rest.pop(0) + scaled
                new.append(scaled)
            return -learning_rate * scaled, tuple(new)
        return leaf

    # The one-pass kernel covers the plain form (one moment); centered and momentum
    # variants run as XLA code.
    fused = None if len(moments) > 1 else (
        lambda count, learning_rate, decay, eps:
        _fused.scaled_coefficients(decay, 1 - decay, learning_rate, eps, eps_in_sqrt),
        _multi.scaled_multi)
    return from_rule("rmsprop", rule, RmspropState, hyperparams,
                     moments=moments, moment_dtype=moment_dtype, fused=fused)
