"""Scheduled hyperparameters as data: the state keeps a settable peak, the optimizer the shape.

See :mod:`optimizers.schedules` (module docstring) for the design. For every
scheduled hyperparameter whose schedule has a settable peak
(:func:`optimizers.schedules.peak`), :func:`optimizers.from_rule` keeps

* ``state.hyperparams[name]``: the peak (settable, like a fixed value; the
  optimizer's own peak unless ``state.overridden[name]``),
* ``state.scheduled[name]``: the value the last step used (read-only),

and a step uses ``schedule(count) · peak / own_peak`` (:func:`scale`). A
schedule whose peak cannot be set (a plain function, a zero peak) is kept in
``state.scheduled`` only, as before, so that whether a name is settable is the
static structure of the state, known under ``jit``.

Why a scale and not the schedule's numeric arguments (init, end, k, …) as data:
one number per hyperparameter, named like the constructor's argument, read
and set like any other (``parallel_fit(configs=[{"learning_rate": v}])``),
and every schedule, arithmetic and joins too, scales the same way; the
arguments would be a nested tree per kind of schedule, and "the learning
rate" of warmup + cosine would still have to mean one of them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from . import schedules as _schedules


def own_peaks(schedules: dict[str, Any]) -> dict[str, jax.Array]:
    """name -> the schedule's own peak, for the schedules whose peak can be set.

    Left out: plain functions (and schedules built with them), whose peak is
    unknown, and schedules whose concrete peak is 0.
    """
    peaks = {}
    for name, schedule in schedules.items():
        if not _schedules._scalable(schedule):
            continue
        value = _schedules._peak(schedule)
        if isinstance(value, jax.core.Tracer) or float(value) != 0:
            peaks[name] = value
    return peaks


def scale(value: jax.Array, peak: jax.Array, own: jax.Array) -> jax.Array:
    """The schedule's ``value`` rescaled to the peak ``peak``: value · peak / own (traced).

    Exactly ``value`` when ``peak`` is the schedule's own peak ``own`` (x / x = 1
    in IEEE arithmetic), so an optimizer whose peak was never set steps exactly
    as before; the derivative with respect to ``peak`` is value / own (not cut
    by a ``where``). A zero ``own`` (possible only when traced) gives ``value``
    when ``peak`` is 0 too, NaN otherwise (a zero schedule cannot be scaled).
    """
    safe = jnp.where(own == 0, jnp.ones_like(own), own)
    scaled = value * (peak / safe)
    return jnp.where(own == 0, jnp.where(peak == 0, value, jnp.nan), scaled).astype(value.dtype)


def not_settable(name: str) -> str:
    """The error of ``set_hyperparams`` for a scheduled hyperparameter without a peak."""
    return (
        f"set_hyperparams: {name} follows a schedule whose peak cannot be set: a plain function "
        "step -> value (or a schedule built with one), whose peak is unknown, or a schedule "
        "whose peak is 0, which no factor changes. Build the optimizer with a schedule from "
        "optimizers.schedules (warmup, cosine_decay, …), or wrap the function as "
        "optimizers.schedules.Schedule(fn, description, probe=[steps where it is largest]); "
        "or build it with a number (then set it)."
    )


def check_peaks(owner: str, state: Any, peaks: dict) -> None:
    """Raises ValueError unless the state keeps a peak for exactly the optimizer's settable
    schedules (static: works under jit). Call after the names were found to match."""
    kept = set(state.hyperparams) & set(state.scheduled)
    if kept == set(peaks):
        return
    fix = ("Step the state with the optimizer whose init made it, or make a new state with "
           "this optimizer's init (state = tx.init(params)).")
    name = sorted(kept ^ set(peaks))[0]
    if name in peaks:
        raise ValueError(
            f"{owner}.update: {name} follows a schedule with a settable peak in this optimizer, "
            "but the state keeps no peak for it (it was made with a plain function step -> "
            f"value, a schedule whose peak is 0, or an older version of optimizers). {fix}")
    raise ValueError(
        f"{owner}.update: the state keeps a peak for {name}, but in this optimizer {name} "
        "follows a plain function step -> value (or a schedule whose peak is 0), which has "
        f"none. {fix}")


def rescale_first(scheduled: jax.Array, count: Any, new: jax.Array, old: jax.Array) -> jax.Array:
    """``state.scheduled[name]`` after its peak changed from ``old`` to ``new``: before the
    first step (count 0) it is the value the first step will use, so it is rescaled; after
    a step it is the value that step used, which stays."""
    if count is None:
        return scheduled
    return jnp.where(jnp.asarray(count) == 0, scale(scheduled, new, old), scheduled)
