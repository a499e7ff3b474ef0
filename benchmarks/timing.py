"""Timing core of the performance benchmarks: interleaved repeats, medians, one markdown table.

Methodology (used by every benchmark in ``run_all.py``):

* A *runner* is ``run(n)``: it performs ``n`` steps and returns only when their
  results are ready (``jax.block_until_ready``; torch is synchronous on CPU).
  Jitted steps thread their outputs back in as the next inputs (params and
  optimizer state donated), which is what a training loop does, so donation
  never needs fresh inputs and no copy is timed.
* Warm-up: every runner makes one step (compile, first-touch page faults) and
  is then calibrated: ``n`` is chosen so one repeat lasts at least
  ``min_time`` seconds and has at least ``min_steps`` steps.
* Interleaving: in each repeat every runner of the group runs once, in an order
  rotated by one per repeat, so slow phases of the (shared, noisy) machine hit
  all contenders alike and no contender always runs right after another.
* The Python garbage collector is off inside a timed block (as in ``timeit``).
* Reported: the median over repeats of (block time / n). Ratios are the median
  over repeats of the per-repeat ratio (both samples from the same repeat, a few
  seconds apart), which cancels slow phases of the machine better than a ratio
  of medians.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Runner = Callable[[int], None]


def timed(fn: Callable[[], object]) -> float:
    """Wall time of one call of ``fn`` in seconds, with the garbage collector off."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()


def calibrate(run: Runner, min_time: float, min_steps: int) -> int:
    """Warms ``run`` up with one step and returns the step count of one repeat."""
    run(1)
    probe = 2
    elapsed = timed(lambda: run(probe))
    per_step = max(elapsed / probe, 1e-7)
    return max(min_steps, math.ceil(min_time / per_step))


def rotated(names: Sequence[str], shift: int) -> list[str]:
    """``names`` rotated left by ``shift`` (the order of one interleaved repeat)."""
    if not names:
        return []
    k = shift % len(names)
    return list(names[k:]) + list(names[:k])


def interleaved(
    runners: Mapping[str, Runner], repeats: int, min_time: float, min_steps: int
) -> dict[str, list[float]]:
    """Seconds per step of each runner, one sample per repeat, repeats interleaved.

    Args:
      runners: name -> ``run(n)``.
      repeats: samples per runner.
      min_time: minimum seconds of one repeat of one runner.
      min_steps: minimum steps of one repeat.

    Returns:
      name -> list of ``repeats`` per-step times in seconds.
    """
    steps = {name: calibrate(run, min_time, min_steps) for name, run in runners.items()}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(repeats):
        for name in rotated(names, r):
            n = steps[name]
            samples[name].append(timed(lambda run=runners[name], n=n: run(n)) / n)
    return samples


STATISTIC = "median"  # what the tables report: "median" or "min" (run_all.py --stat)


def median(xs: Iterable[float]) -> float:
    """The reported statistic of the samples: their median, or their minimum if
    :data:`STATISTIC` is ``"min"`` (nan for no samples)."""
    xs = list(xs)
    if not xs:
        return math.nan
    return min(xs) if STATISTIC == "min" else statistics.median(xs)


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """The median of the per-repeat ratios a[i] / b[i] (samples of the same interleaved
    repeat, so a slow phase of the machine cancels out)."""
    return statistics.median(x / y for x, y in zip(a, b))


def spread(xs: Sequence[float]) -> float:
    """(max − min) / median of the samples: a crude noise figure."""
    return (max(xs) - min(xs)) / statistics.median(xs) if len(xs) > 1 else 0.0


# --------------------------------------------------------------------------- results and table


@dataclass
class Row:
    """One line of the table: a value per contender (seconds, or GB/s for ``unit='GB/s'``)."""

    bench: str
    case: str
    what: str
    unit: str  # "ms", "s" or "GB/s"
    values: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # contender -> text after the number
    noise: float = 0.0  # largest spread of the contenders' samples
    stream: float | None = None  # best streaming GB/s measured in the same repeats
    streams: dict[str, float] = field(default_factory=dict)  # each streaming kernel's GB/s
    samples: dict[str, list[float]] = field(default_factory=dict)  # per repeat, for ratios

    def ratio(self, contender: str, baseline: str) -> float:
        """contender / baseline: the median of the per-repeat ratios when both have
        samples from the same interleaved repeats (a slow phase of the machine then
        cancels out), else the ratio of the reported values."""
        a, b = self.samples.get(contender), self.samples.get(baseline)
        if a and b and len(a) == len(b):
            return paired_ratio(a, b)
        return self.values[contender] / self.values[baseline]


def fmt_number(x: float) -> str:
    """Three significant digits, no exponent for the usual ranges."""
    if x is None or math.isnan(x):
        return "n/a"
    if x == 0:
        return "0"
    digits = max(0, 2 - int(math.floor(math.log10(abs(x)))))
    return f"{x:.{digits}f}"


def _scaled(row: Row, value: float) -> float:
    return value * 1e3 if row.unit == "ms" else value


def markdown(rows: Sequence[Row], contenders: Sequence[str], baseline: str) -> str:
    """The rows as one markdown table: a column per contender, then ratios to ``baseline``.

    Time cells are medians (ms or s); a note (e.g. GB/s) follows in parentheses.
    Ratio columns are :meth:`Row.ratio` (< 1: faster than baseline).
    """
    others = [c for c in contenders if c != baseline]
    header = ["benchmark", "case", "what", "unit", *contenders,
              *[f"{c}/{baseline}" for c in others], "noise"]
    with_stream = any(row.stream for row in rows)
    if with_stream:
        header.append("stream GB/s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.bench, row.case, row.what, row.unit]
        for c in contenders:
            if c in row.values:
                text = fmt_number(_scaled(row, row.values[c]))
                if c in row.notes:
                    text += f" ({row.notes[c]})"
            else:
                text = "–"
            cells.append(text)
        for c in others:
            if c in row.values and row.values.get(baseline) and row.unit != "GB/s":
                cells.append(fmt_number(row.ratio(c, baseline)))
            else:
                cells.append("–")
        cells.append(f"±{100 * row.noise / 2:.0f}%" if row.noise else "")
        if with_stream:
            cells.append(f"{row.stream:.0f}" if row.stream else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
