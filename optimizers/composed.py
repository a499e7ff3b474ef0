"""Optimizers written as chains of building blocks: LAMB and Lion.

Each is a thin function returning :func:`optimizers.chain` of blocks from
:mod:`optimizers.scale` and :mod:`optimizers.transforms`, so its state is the
chain's tuple of link states and its hyperparameters are found by name
(``optimizers.hyperparams(state)["learning_rate"]``).
"""

from __future__ import annotations

from typing import Any

from ._base import Optimizer, chain
from .scale import scale_by_adam, scale_by_learning_rate, scale_by_lion, scale_by_trust_ratio
from .transforms import add_decayed_weights


def lamb(learning_rate: Any = 1e-3, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-6,
         eps_root: Any = 0.0, weight_decay: Any = 0.0, mask: Any = None,
         moment_dtype: Any = None) -> Optimizer:
    """LAMB: Adam's direction plus weight decay, rescaled per leaf by a trust ratio.

    You et al. 2020, "Large Batch Optimization for Deep Learning".

    Update, per leaf: d = m̂ / (√(v̂ + ε_root) + ε) + λ p  (Adam's m̂, v̂; λ p on
    the leaves where ``mask`` is True);  r = ‖p‖ / ‖d‖ (r = 1 if either norm is 0);
    p ← p − η r d.

    It is ``chain(scale_by_adam(b1, b2, eps, eps_root), add_decayed_weights(
    weight_decay, mask), scale_by_trust_ratio(), scale_by_learning_rate(
    learning_rate))``, the same as ``optax.lamb`` with the same arguments (and
    its defaults). The trust ratio needs one norm per leaf: on packed params,
    pack one leaf per buffer.

    Args:
      learning_rate: η ≥ 0, a number or a schedule.
      b1, b2, eps, eps_root, moment_dtype: as in :func:`optimizers.scale_by_adam`.
      weight_decay: λ ≥ 0.
      mask: pytree of bools or a function ``params -> pytree of bools``: the leaves that decay.

    Example:
        >>> tx = optimizers.lamb(1e-3, weight_decay=0.01)
    """
    return chain(scale_by_adam(b1, b2, eps, eps_root, moment_dtype=moment_dtype),
                 add_decayed_weights(weight_decay, mask=mask),
                 scale_by_trust_ratio(),
                 scale_by_learning_rate(learning_rate))


def lion(learning_rate: Any = 1e-4, b1: Any = 0.9, b2: Any = 0.99, weight_decay: Any = 1e-3,
         mask: Any = None, moment_dtype: Any = None) -> Optimizer:
    """Lion: the sign of an interpolated momentum, with decoupled weight decay (Chen et al. 2023).

    Update: p ← p − η (sign(β₁ m + (1 − β₁) g) + λ p)  (λ p where ``mask`` is True);
    then m ← β₂ m + (1 − β₂) g.

    It is ``chain(scale_by_lion(b1, b2), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``, the same as ``optax.lion`` with the
    same arguments (and its defaults). Every coordinate moves by ±η, so Lion's
    learning rate is typically 3–10× smaller than Adam's.

    Args:
      learning_rate: η ≥ 0, a number or a schedule.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      weight_decay: λ ≥ 0.
      mask: pytree of bools or a function ``params -> pytree of bools``: the leaves that decay.
      moment_dtype: dtype of m (default: the param dtype, at least float32).

    Example:
        >>> tx = optimizers.lion(1e-4, weight_decay=0.1)
    """
    return chain(scale_by_lion(b1, b2, moment_dtype=moment_dtype),
                 add_decayed_weights(weight_decay, mask=mask),
                 scale_by_learning_rate(learning_rate))
