"""AdaGrad: per-coordinate learning rates from the sum of squared gradients."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _fused, _multi
from ._base import Optimizer
from ._fused import divide_or_zero, rsqrt_or_zero
from ._rule import from_rule


class AdagradState(NamedTuple):
    count: jax.Array
    sum_of_squares: Any
    hyperparams: dict
    scheduled: dict
    overridden: dict  # name -> bool: set with set_hyperparams (then it wins in update)


def adagrad(
    learning_rate: Any = 0.01, eps: Any = 1e-7, initial_accumulator: Any = 0.0,
    eps_in_sqrt: bool = False, moment_dtype: Any = None,
) -> Optimizer:
    """AdaGrad (Duchi, Hazan & Singer 2011).

    Update: h ← h + g ⊙ g;  p ← p − η g / (√h + ε).
    With ``eps_in_sqrt=True``: p ← p − η g / √(h + ε).

    The defaults are the source texts' (ε = 1e-7 outside the root, h₀ = 0).
    ``torch.optim.Adagrad`` is ε = 1e-10 outside the root;
    ``optax.adagrad`` is ε inside the root with h₀ = 0.1: pass
    ``eps_in_sqrt=True, initial_accumulator=0.1`` to reproduce it.

    Args:
      learning_rate: η ≥ 0, a number or a schedule.
      eps: ε ≥ 0; with ε = 0, a coordinate whose gradients were all 0 gets update 0
        (the limit; 0/0 is defined so, not NaN).
      initial_accumulator: h₀ ≥ 0, the starting value of every h.
      eps_in_sqrt: put ε inside the square root.
      moment_dtype: dtype of h (default: the param dtype, at least float32).

    Example:
        >>> tx = optimizers.adagrad(0.1)
    """
    if not isinstance(eps_in_sqrt, bool):
        raise TypeError(f"adagrad: eps_in_sqrt must be a bool; got {eps_in_sqrt!r}.")

    def rule(count, learning_rate, eps, initial_accumulator):
        def leaf(g, p, sum_of_squares):
            sum_of_squares = sum_of_squares + g * g
            if eps_in_sqrt:
                scaled = g * rsqrt_or_zero(sum_of_squares + eps)
            else:
                scaled = divide_or_zero(g, jnp.sqrt(sum_of_squares) + eps)
            return -learning_rate * scaled, (sum_of_squares,)
        return leaf

    return from_rule(
        "adagrad", rule, AdagradState,
        {"learning_rate": learning_rate, "eps": eps, "initial_accumulator": initial_accumulator},
        moments=("sum_of_squares",), moment_init={"sum_of_squares": "initial_accumulator"},
        moment_dtype=moment_dtype,
        fused=(lambda count, learning_rate, eps, initial_accumulator:
               _fused.scaled_coefficients(1.0, 1.0, learning_rate, eps, eps_in_sqrt),
               _multi.scaled_multi),
    )
