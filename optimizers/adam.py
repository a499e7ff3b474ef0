"""Adam and AdamW: bias-corrected first and second moment estimates."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _fused, _multi
from ._base import Optimizer
from ._fused import divide_or_zero
from ._rule import from_rule


class AdamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict
    scheduled: dict
    overridden: dict  # name -> bool: set with set_hyperparams (then it wins in update)


def _adam_rule(count, b1, b2, eps, bias_correction):
    """The shared Adam arithmetic: scalars once, then ``direction(g, mu, nu)``.

    direction = m̂ / (√v̂ + ε), with the new moments; 0 where √v̂ + ε = 0 (ε = 0 and
    a gradient that was always 0: the limit, not 0/0 = NaN).
    """
    keep1, keep2 = 1 - b1, 1 - b2
    if bias_correction:
        t = count.astype(b1.dtype)
        correction1, correction2 = 1 - b1**t, 1 - b2**t
    else:
        correction1 = correction2 = None

    def direction(g, mu, nu):
        mu = b1 * mu + keep1 * g
        nu = b2 * nu + keep2 * g * g
        if bias_correction:
            return divide_or_zero(mu / correction1, jnp.sqrt(nu / correction2) + eps), mu, nu
        return divide_or_zero(mu, jnp.sqrt(nu) + eps), mu, nu

    return direction


def _check_flag(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool; got {value!r}.")


def adam(
    learning_rate: Any = 1e-3, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
    bias_correction: bool = True, moment_dtype: Any = None,
) -> Optimizer:
    """Adam (Kingma & Ba 2015).

    Update: m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²;
    m̂ = m / (1 − β₁ᵗ);  v̂ = v / (1 − β₂ᵗ);  p ← p − η m̂ / (√v̂ + ε).
    Without bias correction m̂ = m and v̂ = v (the source texts' first form).

    Matches ``torch.optim.Adam`` and ``optax.adam`` (ε outside the root).
    Hyperparameters, m and v are kept in float32 at least, so for bfloat16 and
    float16 params β₂ = 0.999 stays below 1, v can decay by 0.1% a step (in
    bfloat16 it could not) and neither overflows nor underflows (float16's
    range ends at 6.5e4; g² of g = 1e-4 is below it). That costs memory: 8 bytes
    of moments per 16-bit param instead of 4; ``moment_dtype=jnp.bfloat16``
    keeps the 16-bit moments.

    ε = 0 is allowed: where √v̂ + ε = 0 (a coordinate whose gradient was always
    0) the update is 0, the limit, not 0/0.

    Args:
      learning_rate: η ≥ 0, a number or a schedule.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε ≥ 0.
      bias_correction: divide by 1 − βᵗ.
      moment_dtype: dtype of m and v (default: the param dtype, at least float32).

    Example:
        >>> tx = optimizers.adam(1e-3)
    """
    _check_flag("adam", "bias_correction", bias_correction)

    def rule(count, learning_rate, b1, b2, eps):
        direction = _adam_rule(count, b1, b2, eps, bias_correction)

        def leaf(g, p, mu, nu):
            d, mu, nu = direction(g, mu, nu)
            return -learning_rate * d, (mu, nu)
        return leaf

    return from_rule(
        "adam", rule, AdamState,
        {"learning_rate": learning_rate, "b1": b1, "b2": b2, "eps": eps},
        moments=("mu", "nu"), moment_dtype=moment_dtype,
        fused=(functools.partial(_fused.adam_coefficients, bias_correction=bias_correction),
               _multi.adam_multi),
    )


def adamw(
    learning_rate: Any = 1e-3, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
    weight_decay: Any = 0.01, mask: Any = None, bias_correction: bool = True,
    moment_dtype: Any = None,
) -> Optimizer:
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019).

    Update: as :func:`adam`, then p ← p − η λ p on the leaves where ``mask`` is
    True, p being the param before the step:
    p ← p − η (m̂ / (√v̂ + ε) + λ p).

    Matches ``torch.optim.AdamW`` and ``optax.adamw``.

    Args:
      learning_rate: η ≥ 0, a number or a schedule (it also scales the decay).
      b1, b2, eps, bias_correction, moment_dtype: as in :func:`adam`.
      weight_decay: λ ≥ 0.
      mask: pytree of bools, or a function ``params -> pytree of bools``, saying
        which leaves decay (default: all), e.g. ``lambda p: jax.tree.map(lambda
        x: x.ndim > 1, p)`` to spare biases.

    Example:
        >>> tx = optimizers.adamw(1e-3, weight_decay=1e-4)
    """
    _check_flag("adamw", "bias_correction", bias_correction)

    def rule(count, learning_rate, b1, b2, eps, weight_decay):
        direction = _adam_rule(count, b1, b2, eps, bias_correction)

        def leaf(g, p, mu, nu):
            d, mu, nu = direction(g, mu, nu)
            return -learning_rate * (d + weight_decay * p), (mu, nu)
        return leaf

    return from_rule(
        "adamw", rule, AdamState,
        {"learning_rate": learning_rate, "b1": b1, "b2": b2, "eps": eps,
         "weight_decay": weight_decay},
        moments=("mu", "nu"), moment_dtype=moment_dtype,
        needs_params=True, mask=mask, masked=("weight_decay",),
        fused=(functools.partial(_fused.adam_coefficients, bias_correction=bias_correction),
               _multi.adam_multi),
    )
