"""Checks for hyperparameter values, shared by constructors and ``set_hyperparams``.

One table says what each hyperparameter name may hold. A value is checked only
when it is concrete: tracers (under ``jit``/``vmap``) and schedules pass through,
so hyperparameters can be data.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

INF = math.inf

# name -> (low, high, low_inclusive, high_inclusive)
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "learning_rate": (0.0, INF, True, False),
    "momentum": (0.0, 1.0, True, False),
    "b1": (0.0, 1.0, True, False),
    "b2": (0.0, 1.0, True, False),
    "decay": (0.0, 1.0, True, False),
    "eps": (0.0, INF, True, False),
    "initial_accumulator": (0.0, INF, True, False),
    "weight_decay": (0.0, INF, True, False),
    "max_norm": (0.0, INF, False, False),
    "max_delta": (0.0, INF, False, False),
}


def describe_range(name: str) -> str:
    low, high, low_in, high_in = RANGES[name]
    left = "[" if low_in else "("
    right = "]" if high_in else ")"
    high_text = "inf" if high == INF else f"{high:g}"
    return f"{left}{low:g}, {high_text}{right}"


def is_schedule(value: Any) -> bool:
    return callable(value) and not isinstance(value, (jax.Array, np.ndarray))


def _concrete_scalar(owner: str, name: str, value: Any) -> float | None:
    """Returns the value as a float, or None when it is a tracer (not checkable)."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool) or isinstance(value, (str, bytes)) or value is None:
        raise TypeError(
            f"{owner}: {name} must be a real number, a scalar array or a schedule "
            f"(a function step -> value); got {type(value).__name__} {value!r}."
        )
    try:
        array = np.asarray(value)
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise TypeError(
            f"{owner}: {name} must be a real number, a scalar array or a schedule; "
            f"got {type(value).__name__}."
        ) from error
    if array.dtype.kind not in "fiu":
        raise TypeError(
            f"{owner}: {name} must be a real number, a scalar array or a schedule; "
            f"got a value of dtype {array.dtype}."
        )
    if array.ndim != 0:
        raise ValueError(
            f"{owner}: {name} must be a scalar; got an array of shape {array.shape}. "
            "To train several models with different values, jax.vmap over a batch of "
            "optimizer states (see optimizers.set_hyperparams)."
        )
    return float(array)


def check(owner: str, name: str, value: Any, *, allow_schedule: bool = True) -> None:
    """Raises a clear error if a concrete ``value`` is outside the range of ``name``."""
    if is_schedule(value):
        if not allow_schedule:
            raise TypeError(f"{owner}: {name} must be a number, not a schedule.")
        return
    number = _concrete_scalar(owner, name, value)
    if number is None or name not in RANGES:
        return
    low, high, low_in, high_in = RANGES[name]
    above = number >= low if low_in else number > low
    below = number <= high if high_in else number < high
    if not (above and below):  # also catches NaN
        raise ValueError(
            f"{owner}: {name} must be in {describe_range(name)}; got {number!r}."
        )
