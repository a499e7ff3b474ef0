"""Learning-rate schedules: functions ``step -> value``, step counting from 0, jit-safe.

A schedule goes wherever a number goes in an optimizer (``adam(cosine_decay(1e-3, 1000))``)
and can be plotted by evaluating it on ``jnp.arange(n)``. Schedules combine with
``join`` and with arithmetic: ``0.5 * cosine_decay(…) + 1e-5`` is a schedule too.

Checks: the constructors check their arguments (finite numbers, positive
lengths, increasing boundaries). An optimizer given a schedule checks its
values where they can be extreme (:attr:`Schedule.probe`: step 0, the end of a
decay, the boundaries; only step 0 for a plain function) against the
hyperparameter's range; a value out of range at any other step (or under
``jit``, where nothing can be checked) makes that step's update NaN. Steps
count from 0: a concrete negative step is an error, a traced one gives NaN.

**Schedules as data: a settable peak times a fixed shape.** A schedule's
*peak* (:func:`peak`) is its value of largest magnitude at its probe steps:
the ``init`` of a decay, the cosine's ``init`` in ``warmup(cosine_decay(1e-3,
1000), 100)``, the largest of ``piecewise_constant``'s values. An optimizer
keeps the peak of each scheduled hyperparameter in its state as data
(``state.hyperparams``, beside the value the last step used in
``state.scheduled``), and the schedule itself, a Python function, as the
shape. A step uses

    value(t) = schedule(t) · peak_in_state / peak(schedule)

so ``optimizers.set_hyperparams(state, learning_rate=3e-4)`` multiplies the
whole schedule (its ``start``, ``end`` and floors too: same shape, another
height) so that its peak becomes 3e-4, with no recompilation, under ``jit``
and ``vmap`` (``fnn.tuning.parallel_fit`` searches the peak of warmup +
cosine this way), and ``optimizers.hyperparams(state)`` still reads the value
the last step used (before the first step: the value the first step will
use). Which schedules have a settable peak (:attr:`Schedule.scalable`): every
schedule of this module, joins, warm-ups and arithmetic of them, and a
``Schedule(fn, description, probe)`` built by the user (who lists in
``probe`` the steps where ``fn`` is largest). Not settable: a plain function
``step -> value`` (or a schedule built with one), whose peak is unknown, and a
schedule whose peak is 0, which no factor can change; ``set_hyperparams``
says so. The scaled values stay range-checked: a concrete peak out of range is
an error in ``set_hyperparams`` (the values at the probe steps are in range
exactly when the peak is, as they all lie between 0 and it), a traced one
makes the step NaN. (Why a scale, not the arguments as data: :mod:`optimizers._scheduled`.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

INT32_MAX = int(np.iinfo(np.int32).max)  # step counts saturate here (optimizers' count)


def _float(step: Any) -> jax.Array:
    """The step as the default float dtype (float64 when x64 is enabled)."""
    return jnp.asarray(step).astype(jnp.result_type(float))


class Schedule:
    """A function ``step -> value`` that supports +, −, ×, ÷ with numbers and schedules.

    Example:
        >>> lr = 0.5 * optimizers.schedules.cosine_decay(0.1, 1000) + 1e-4
        >>> lr(jnp.arange(1000))   # values to plot
    """

    def __init__(self, fn: Callable[[jax.Array], jax.Array], description: str,
                 probe: Sequence[int] = (0,), scalable: bool = True):
        if not isinstance(scalable, bool):
            raise TypeError(f"Schedule: scalable must be True or False; got {scalable!r}.")
        self._fn = fn
        self._description = description
        #: steps at which the schedule takes its extreme values (checked by optimizers)
        self.probe = tuple(sorted({min(int(s), INT32_MAX) for s in probe}))
        #: whether :func:`peak` is known, so that ``set_hyperparams`` can scale the schedule
        #: (False when a plain function ``step -> value`` is part of it)
        self.scalable = scalable

    def __call__(self, step: Any) -> jax.Array:
        """The value at ``step`` (≥ 0).

        A negative Python or NumPy step is an error; a negative step given as a
        JAX array (traced, or concrete: not copied to the host to be checked)
        gives NaN.
        """
        if not isinstance(step, jax.Array):
            array = np.asarray(step)
            if array.dtype.kind not in "iuf":
                raise TypeError(f"schedule: step must be a number (or array of numbers); got "
                                f"{type(step).__name__} {step!r}.")
            if array.size and not np.all(array >= 0):
                raise ValueError(f"schedule {self!r}: steps count from 0; got step "
                                 f"{array[~(array >= 0)].ravel()[0].item()!r}.")
            return self._fn(jnp.asarray(step))
        step = jnp.asarray(step)
        value = jnp.asarray(self._fn(step))
        return jnp.where(step >= 0, value, jnp.nan)

    def __repr__(self) -> str:
        return self._description

    def _combine(self, other: Any, op: Callable, symbol: str, reverse: bool = False) -> Schedule:
        if callable(other):
            other_fn, other_text = other, repr(other)
        else:
            _number("schedule arithmetic", "the number", other)
            other_fn, other_text = (lambda step, v=other: v), repr(other)
        def fn(step):
            a, b = self(step), other_fn(step)
            return op(b, a) if reverse else op(a, b)
        left, right = (other_text, repr(self)) if reverse else (repr(self), other_text)
        return Schedule(fn, f"({left} {symbol} {right})",
                        self.probe + getattr(other, "probe", (0,)),
                        self.scalable and (not callable(other) or _scalable(other)))

    def __add__(self, other):
        return self._combine(other, jnp.add, "+")

    def __radd__(self, other):
        return self._combine(other, jnp.add, "+", reverse=True)

    def __sub__(self, other):
        return self._combine(other, jnp.subtract, "-")

    def __rsub__(self, other):
        return self._combine(other, jnp.subtract, "-", reverse=True)

    def __mul__(self, other):
        return self._combine(other, jnp.multiply, "*")

    def __rmul__(self, other):
        return self._combine(other, jnp.multiply, "*", reverse=True)

    def __truediv__(self, other):
        return self._combine(other, jnp.divide, "/")


def _scalable(schedule: Any) -> bool:
    """Whether ``schedule`` is a :class:`Schedule` whose peak is known (not a plain function)."""
    return isinstance(schedule, Schedule) and schedule.scalable


def peak(schedule: Callable) -> jax.Array:
    """The peak of a schedule: what ``set_hyperparams`` sets for a hyperparameter following it.

    peak = s(t*),  t* = argmax |s(t)| over t in ``schedule.probe`` (the first on ties),

    the steps where the schedule takes its extreme values (step 0, the ends of
    ramps and decays, the boundaries of joins). An optimizer multiplies the
    schedule by ``p / peak(schedule)`` when the peak is set to ``p``. For
    arithmetic on schedules the peak is the largest value at the pieces' probe
    steps (a sum of a rising and a falling piece can exceed it in between).
    Traced arguments give a traced peak.

    Raises:
      TypeError: ``schedule`` is a plain function, or a Schedule built with one
        (its peak is unknown).
      ValueError: the peak is 0 (no factor can change the schedule).

    Example:
        >>> peak(warmup(cosine_decay(1e-3, 1000), steps=100))   # 1e-3
        >>> peak(piecewise_constant([0.1, 0.5, 0.01], boundaries=[10, 20]))   # 0.5
    """
    if not _scalable(schedule):
        raise TypeError(
            f"peak: {schedule!r} is a plain function step -> value (or a schedule built with "
            "one), whose peak is unknown. Build it from optimizers.schedules, or wrap it as "
            "optimizers.schedules.Schedule(fn, description, probe=[steps where it is largest]).")
    value = _peak(schedule)
    if not isinstance(value, jax.core.Tracer) and float(value) == 0:
        raise ValueError(f"peak: the peak of {schedule!r} is 0; no factor can change it.")
    return value


def _peak(schedule: Schedule) -> jax.Array:
    """The value of largest magnitude at the probe steps (concrete when the arguments are)."""
    with jax.ensure_compile_time_eval():  # constants stay concrete inside jit
        values = [jnp.asarray(schedule(jnp.asarray(step, jnp.int32))).reshape(())
                  for step in schedule.probe]
    if any(isinstance(v, jax.core.Tracer) for v in values):
        stacked = jnp.stack([v.astype(jnp.result_type(float)) for v in values])
        return stacked[jnp.argmax(jnp.abs(stacked))]
    # concrete: chosen on the host (no extra compiled ops when an optimizer is built)
    magnitudes = [abs(float(v)) for v in values]
    return values[magnitudes.index(max(magnitudes))]


def _number(owner: str, name: str, value: Any, *, low: float = -math.inf,
            low_open: bool = False) -> None:
    """Checks a concrete finite real scalar against a lower bound; tracers pass."""
    if isinstance(value, jax.core.Tracer):
        return
    array = None if isinstance(value, (bool, str, bytes)) or value is None else np.asarray(
        value) if isinstance(value, (int, float, np.ndarray, np.generic, jax.Array)) else None
    if array is None or array.dtype.kind not in "iuf" or array.ndim != 0:
        raise TypeError(f"{owner}: {name} must be a real scalar; got {type(value).__name__} "
                        f"{value!r}.")
    number = float(array)
    ok = number > low if low_open else number >= low
    if not (ok and math.isfinite(number)):
        bracket = "(" if low_open else "["
        raise ValueError(f"{owner}: {name} must be a finite number in {bracket}{low:g}, inf); "
                         f"got {number!r}.")


def _positive_int(owner: str, name: str, value: Any) -> int:
    """``value`` as a Python int ≥ 1 (a Python or NumPy integer), else a clear error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner}: {name} must be an int >= 1; got {type(value).__name__} "
                        f"{value!r}.")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be an int in [1, inf); got {value}.")
    return int(value)


def constant(value: Any) -> Schedule:
    """The same value at every step: α(t) = α₀.

    Example:
        >>> constant(0.1)(5)   # 0.1
    """
    _number("constant", "value", value)
    return Schedule(lambda step: jnp.full(jnp.shape(step), value, jnp.result_type(float)),
                    f"constant({value!r})")


def step_decay(init: Any, every: int, factor: Any) -> Schedule:
    """Multiplies the rate by ``factor`` every ``every`` steps: α(t) = α₀ · f^⌊t / every⌋.

    Example:
        >>> step_decay(0.1, every=30, factor=0.5)(60)   # 0.025
    """
    _number("step_decay", "init", init, low=0.0)
    length = float(_positive_int("step_decay", "every", every))
    _number("step_decay", "factor", factor, low=0.0)
    return Schedule(lambda step: init * factor ** jnp.floor_divide(_float(step), length),
                    f"step_decay({init!r}, every={every!r}, factor={factor!r})")


def exponential_decay(init: Any, k: Any) -> Schedule:
    """Exponential decay: α(t) = α₀ e^{−k t}.

    Example:
        >>> exponential_decay(0.1, k=0.01)(100)   # 0.1 / e
    """
    _number("exponential_decay", "init", init, low=0.0)
    _number("exponential_decay", "k", k, low=0.0)
    return Schedule(lambda step: init * jnp.exp(-k * _float(step)),
                    f"exponential_decay({init!r}, k={k!r})")


def inverse_time(init: Any, tau: Any) -> Schedule:
    """Constant for τ steps, then ∝ 1/t: α(t) = α₀ τ / max(t, τ).

    Example:
        >>> inverse_time(0.1, tau=100)(400)   # 0.025
    """
    _number("inverse_time", "init", init, low=0.0)
    _number("inverse_time", "tau", tau, low=0.0, low_open=True)
    return Schedule(lambda step: init * tau / jnp.maximum(_float(step), float(tau)),
                    f"inverse_time({init!r}, tau={tau!r})")


def cosine_decay(init: Any, decay_steps: int, end: Any = 0.0) -> Schedule:
    """Cosine annealing from ``init`` to ``end`` over ``decay_steps``, then ``end``.

    α(t) = end + (α₀ − end) · ½ (1 + cos(π min(t, T) / T)),  T = ``decay_steps``.

    Example:
        >>> cosine_decay(0.1, decay_steps=1000)(500)   # 0.05
    """
    _number("cosine_decay", "init", init, low=0.0)
    length = float(_positive_int("cosine_decay", "decay_steps", decay_steps))  # any size
    _number("cosine_decay", "end", end, low=0.0)

    def fn(step):
        progress = jnp.minimum(_float(step), length) / length
        return end + (init - end) * 0.5 * (1 + jnp.cos(jnp.pi * progress))

    return Schedule(fn, f"cosine_decay({init!r}, decay_steps={decay_steps!r}, end={end!r})",
                    probe=(0, decay_steps))


def linear(init: Any, end: Any, steps: int) -> Schedule:
    """Linear interpolation from ``init`` to ``end`` over ``steps``, then ``end``.

    α(t) = α₀ + (end − α₀) · min(t, T) / T,  T = ``steps``.

    Example:
        >>> linear(0.0, 0.1, steps=100)(50)   # 0.05
    """
    _number("linear", "init", init)
    _number("linear", "end", end)
    length = float(_positive_int("linear", "steps", steps))

    def fn(step):
        # the fraction first: exactly 1 at the end, so the value is exactly ``end`` there
        # (a rate decayed to 0 is 0, never −1e-19)
        return init + (end - init) * (jnp.minimum(_float(step), length) / length)

    return Schedule(fn, f"linear({init!r}, {end!r}, steps={steps!r})", probe=(0, steps))


def _check_boundaries(owner: str, boundaries: Sequence[int], pieces: int, what: str) -> None:
    if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Sequence | np.ndarray):
        raise TypeError(f"{owner}: boundaries must be a sequence of ints; got {boundaries!r}.")
    if any(isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer))
           for b in boundaries):
        raise TypeError(f"{owner}: boundaries must be ints; got {list(boundaries)!r}.")
    if len(boundaries) != pieces - 1:
        raise ValueError(
            f"{owner}: {pieces} {what} need {pieces - 1} boundaries; got {len(boundaries)}."
        )
    if any(b <= a for a, b in zip(boundaries, boundaries[1:])) or any(b < 0 for b in boundaries):
        raise ValueError(
            f"{owner}: boundaries must be non-negative and strictly increasing; got "
            f"{list(boundaries)!r}."
        )


def piecewise_constant(values: Sequence[Any], boundaries: Sequence[int]) -> Schedule:
    """``values[i]`` for boundaries[i−1] ≤ t < boundaries[i] (one more value than boundaries).

    Example:
        >>> piecewise_constant([0.1, 0.01, 0.001], boundaries=[100, 200])(150)   # 0.01
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray) or (
            len(values) == 0):
        raise TypeError(f"piecewise_constant: values must be a non-empty sequence of numbers; "
                        f"got {values!r}.")
    for i, value in enumerate(values):
        _number("piecewise_constant", f"values[{i}]", value)
    _check_boundaries("piecewise_constant", boundaries, len(values), "values")
    table = jnp.asarray(np.asarray(values, np.float64), jnp.result_type(float))
    edges = _edges(boundaries)
    return Schedule(lambda step: table[jnp.searchsorted(edges, step, side="right")],
                    f"piecewise_constant({list(values)!r}, boundaries={list(boundaries)!r})",
                    probe=(0, *boundaries))


def _edges(boundaries: Sequence[int]) -> jax.Array:
    """Boundaries as int32, those past the largest int32 step clipped to it (never reached)."""
    return jnp.asarray(np.minimum(np.asarray(boundaries, np.int64), INT32_MAX), jnp.int32)


def join(schedules: Sequence[Callable], boundaries: Sequence[int]) -> Schedule:
    """Runs schedules one after another; each piece sees its own local step.

    α(t) = schedules[i](t − boundaries[i−1]) for boundaries[i−1] ≤ t < boundaries[i]
    (boundaries[−1] = 0).

    Example:
        >>> lr = join([linear(0.0, 0.1, 100), cosine_decay(0.1, 900)], boundaries=[100])
        >>> lr(100)   # 0.1: the cosine piece at its local step 0
    """
    if not schedules or not all(callable(s) for s in schedules):
        raise TypeError("join: schedules must be a non-empty sequence of functions step -> value.")
    _check_boundaries("join", boundaries, len(schedules), "schedules")
    edges = _edges(boundaries)
    starts = [0, *(min(int(b), INT32_MAX) for b in boundaries)]

    def fn(step):
        index = jnp.searchsorted(edges, step, side="right")
        # every piece is evaluated, each at its local step clamped to ≥ 0 (a piece not yet
        # reached is not asked for a negative step; its value is not selected anyway)
        pieces = [jnp.asarray(s(jnp.maximum(step - start, 0))) for s, start in zip(schedules,
                                                                                   starts)]
        dtype = jnp.result_type(*pieces)
        return jnp.select([index == i for i in range(len(pieces))],
                          [p.astype(dtype) for p in pieces])

    probe = [start + local for s, start in zip(schedules, starts)
             for local in getattr(s, "probe", (0,))]
    return Schedule(fn, f"join({list(schedules)!r}, boundaries={list(boundaries)!r})", probe,
                    all(_scalable(s) for s in schedules))


def warmup(schedule: Any, steps: int, start: Any = 0.0) -> Schedule:
    """Linear warm-up from ``start`` to ``schedule(0)`` over ``steps``, then ``schedule``.

    α(t) = start + (schedule(0) − start) · t / T for t < T, then schedule(t − T).
    ``schedule`` may be a number (constant after warm-up).

    Example:
        >>> lr = warmup(cosine_decay(1e-3, 10_000), steps=500)
    """
    length = float(_positive_int("warmup", "steps", steps))
    _number("warmup", "start", start)
    target = schedule if callable(schedule) else constant(schedule)
    ramp = Schedule(lambda step: start + (target(0) - start) * (_float(step) / length),
                    f"linear({start!r}, …, steps={steps})")
    joined = join([ramp, target], [steps])
    return Schedule(joined, f"warmup({target!r}, steps={steps!r}, start={start!r})",
                    joined.probe, joined.scalable)
