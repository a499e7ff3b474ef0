"""Checks for hyperparameter values, shared by constructors and ``set_hyperparams``.

One table says what each hyperparameter name may hold. A value is checked only
when it is concrete: tracers (under ``jit``/``vmap``) pass through, so
hyperparameters can be data; a schedule is checked by its value at step 0.
What cannot be checked where the user called us (a traced value, a schedule's
later values) is checked in the step itself by :func:`nan_outside_range`, which
makes an out-of-range value NaN, so that training shows NaN instead of moving
the params up the gradient.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
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
    "eps_root": (0.0, INF, True, False),
    "step_size": (-INF, INF, False, False),  # any finite number (scale's factor)
    "min_norm": (0.0, INF, True, False),
    "trust_coefficient": (0.0, INF, True, False),
}


# hyperparameters read only by init (they fill a moment): setting them in a state changes nothing
INIT_ONLY = {"initial_accumulator": "sum_of_squares"}


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


def _in_range(name: str, number: Any) -> Any:
    """Whether ``number`` (a float, NumPy or jnp array) is in the range of ``name``; NaN is not."""
    low, high, low_in, high_in = RANGES[name]
    above = number >= low if low_in else number > low
    below = number <= high if high_in else number < high
    return above & below


def check(owner: str, name: str, value: Any, *, allow_schedule: bool = True) -> None:
    """Raises a clear error if a concrete ``value`` is outside the range of ``name``.

    A schedule is checked by its value at step 0 (when that is concrete); its
    later values are checked in the step (:func:`nan_outside_range`).
    """
    if is_schedule(value):
        if not allow_schedule:
            raise TypeError(
                f"{owner}: {name} must be a number, not a schedule. A schedule is part of the "
                "optimizer: build a new optimizer with it, or set its peak with a number (the "
                "whole schedule is scaled so that its peak is that number).")
        _check_schedule(owner, name, value)
        return
    number = _concrete_scalar(owner, name, value)
    if number is None or name not in RANGES:
        return
    if not _in_range(name, number):  # also catches NaN
        raise ValueError(
            f"{owner}: {name} must be in {describe_range(name)}; got {number!r}."
        )


def _check_schedule(owner: str, name: str, schedule: Any) -> None:
    """Checks a schedule's values at the steps where they can be extreme (its ``probe``:
    step 0, the end of a decay, boundaries; only step 0 for a plain function)."""
    for step in getattr(schedule, "probe", (0,)):
        with jax.ensure_compile_time_eval():  # as schedules.peak evaluates it: concrete in jit
            value = schedule(jnp.asarray(step, jnp.int32))
        if isinstance(value, jax.core.Tracer):  # built from traced values: checked in the step
            return
        array = np.asarray(value)
        if array.dtype.kind not in "fiub" or array.ndim != 0:
            raise TypeError(
                f"{owner}: the schedule given as {name} must return a real scalar for a scalar "
                f"step; at step {step} it returned {array.dtype} of shape {array.shape}."
            )
        if name in RANGES and not _in_range(name, float(array)):
            raise ValueError(
                f"{owner}: {name} must be in {describe_range(name)} at every step; the "
                f"schedule {schedule!r} gives {float(array)!r} at step {step}."
            )


def check_batch(owner: str, name: str, value: Any) -> None:
    """Like :func:`check`, for an array of values (one per vmapped state); tracers pass."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        array = np.asarray(value)
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise TypeError(f"{owner}: {name} must be numbers; got {type(value).__name__}.") from error
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{owner}: {name} must be real numbers; got dtype {array.dtype}.")
    if name in RANGES:
        bad = ~_in_range(name, array.astype(np.float64))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{owner}: every {name} must be in {describe_range(name)}; got "
                f"{array[where].item()!r} at index {where}."
            )


def nan_outside_range(name: str, value: jax.Array) -> jax.Array:
    """``value`` where it is in the range of ``name``, NaN elsewhere (traced; scalar work).

    Written as ``value + (0 or NaN)`` so that a derivative with respect to the
    value is NaN too (a ``where`` would route it to zero).
    """
    if name not in RANGES:
        return value
    return value + jnp.where(_in_range(name, value), 0, jnp.nan).astype(value.dtype)
