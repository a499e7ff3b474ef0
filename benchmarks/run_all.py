"""Issue 7 benchmark suite: fnn against optax (and torch.optim) in one process, one table.

Runs, in one process, with interleaved repeats and medians (see ``timing.py``):

* ``stream``: the streaming ceiling, best GB/s of in-place scale/triad/Adam-traffic
  kernels (JAX and torch) at 10M and 100M float32 elements (``stream.py``);
* step cases ``10M``, ``100x100k``, ``1000x1k``, ``mlp``: every optimizer's
  jitted, donated update + apply_updates, ms per step and achieved GB/s; the
  ``10M`` case runs the JAX streaming kernels in the same interleaved repeats
  (column ``stream GB/s``) and times Adam without donation once
  (``optimizer_step.py``);
* ``compile:10``, ``compile:100``, ``compile:1000``, ``compile:5000``: trace,
  lower and compile seconds of the Adam step at that many 1k leaves
  (``compile_time.py``);
* ``train``: a full 784-512-512-10 MLP train step with Adam, batch 128
  (``train_step.py``).

It prints a header (date, machine, versions, command, the streaming ceiling), one
markdown table (medians; ratios contender/optax, < 1 means faster than optax)
and the issue's targets checked against the table. Progress goes to stderr.
Contenders are the dicts in ``contenders.py`` (one line adds a column).
Cases are picked with ``--case`` (also ``step``, ``compile``), optimizers with
``--only``, contenders with ``--contenders``. Examples::

    python benchmarks/run_all.py                      # everything (about 10 min)
    python benchmarks/run_all.py --quick              # without the ~50 s compiles (about 5 min)
    python benchmarks/run_all.py --only adam --case 1000x1k
    python benchmarks/run_all.py --case compile:1000 --contenders optax,"fnn packed"
    python benchmarks/run_all.py --repeats 7 --out /tmp/bench.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence

import jax
import timing
from compile_time import COMPILE_LEAVES, compile_rows
from contenders import (
    BASELINE,
    BYTES_PER_PARAM,
    JAX_CONTENDERS,
    OPTIMIZERS,
    TORCH_CONTENDERS,
    check_numerics,
)
from optimizer_step import STEP_CASES, step_rows
from stream import stream_ceiling
from timing import Row, markdown
from train_step import train_rows

COMPILE_CASES = [f"compile:{n}" for n in COMPILE_LEAVES]
ALL_CASES = ["stream", *STEP_CASES, *COMPILE_CASES, "train"]
ALIASES = {"step": list(STEP_CASES), "compile": COMPILE_CASES}
QUICK_SKIP = {5000: ("optax", "fnn p+u")}  # compiles that take ~50 s each


def parse_list(text: str | None, allowed: Sequence[str], what: str,
               aliases: dict[str, list[str]] | None = None) -> list[str]:
    """A comma-separated selection, checked against ``allowed`` (None: all)."""
    if text is None:
        return list(allowed)
    chosen: list[str] = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        expanded = (aliases or {}).get(item, [item])
        for x in expanded:
            if x not in allowed:
                raise SystemExit(f"unknown {what} {x!r}; choose from {', '.join(allowed)}"
                                 + (f" or {', '.join(aliases)}" if aliases else ""))
            if x not in chosen:
                chosen.append(x)
    return chosen


def cpu_model() -> str:
    """The ``lscpu`` model name and the CPU count."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                     if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} CPUs"


def versions() -> str:
    """Versions of the libraries under test."""
    import jaxlib
    import optax

    parts = [f"jax {jax.__version__}", f"jaxlib {jaxlib.__version__}", f"optax {optax.__version__}"]
    if TORCH_CONTENDERS:
        import torch

        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    return ", ".join(parts)


def _speedup(row: Row, contender: str) -> float:
    return 1 / row.ratio(contender, BASELINE)


def targets(rows: Sequence[Row], ceiling: float | None, fnn_names: Sequence[str]) -> list[str]:
    """The issue's must-reach figures, read off the table, one line per target."""
    by = {(r.bench, r.case, r.what): r for r in rows}
    lines = []

    def report(label: str, key: tuple, test, show) -> None:
        row = by.get(key)
        if row is None or BASELINE not in row.values:
            return
        parts = [f"{c} {show(row, c)} {mark(test(row, c), row)}"
                 for c in fnn_names if c in row.values]
        lines.append(f"- {label}: " + ", ".join(parts))

    def mark(ok: bool | float, row: Row) -> str:
        """✓/✗; a float is the relative margin by which a target was missed."""
        if ok is True:
            return "✓"
        if ok is not False and ok <= row.noise / 2:
            return "✗ (within noise)"
        return "✗"

    def not_slower(factor: float = 1.0):
        def test(r, c):
            excess = r.ratio(c, BASELINE) / factor - 1
            return True if excess <= 0 else excess
        return test

    def fast(x):
        return lambda r, c: _speedup(r, c) >= x

    def times(r, c):
        return f"{_speedup(r, c):.2f}×"

    stateful = [n for n in OPTIMIZERS if n != "sgd"]
    for case, factor in [("1000x1k", 5), ("100x100k", 1.5)]:
        for name in stateful:
            report(f"{name} step {case} ≥ {factor}× faster than optax", ("step", case, name),
                   fast(factor), times)
    for case in ("10M", "100x100k", "1000x1k"):
        for name in OPTIMIZERS:
            row = by.get(("step", case, name))
            if row and {"fnn p+u", BASELINE} <= set(row.values):
                excess = row.ratio("fnn p+u", BASELINE) - 1
                lines.append(f"- {name} {case} through p + u not slower than optax: fnn p+u "
                             f"{_speedup(row, 'fnn p+u'):.2f}× {mark(excess <= 0 or excess, row)}")
            if row and {"fnn skip", "fnn step"} <= set(row.values):
                ratio = row.ratio("fnn skip", "fnn step")
                lines.append(f"- {name} {case} skip_nonfinite within 10% of the plain step: "
                             f"{ratio:.2f}× {mark(ratio <= 1.1 or ratio - 1.1, row)}")
    report("Adam compile at 1000 leaves ≥ 5× faster than optax",
           ("compile", "1000 leaves x 1k", "adam: trace+lower+compile"), fast(5), times)
    key5000 = ("compile", "5000 leaves x 1k", "adam: trace+lower+compile")
    if key5000 in by:
        row = by[key5000]
        parts = [f"{c} {row.values[c]:.2f} s {'✓' if row.values[c] <= 5 else '✗'}"
                 for c in fnn_names if c in row.values]
        lines.append("- Adam compile at 5000 leaves ≤ 5 s: " + ", ".join(parts))
    for name in OPTIMIZERS:
        report(f"10M {name} not slower than optax", ("step", "10M", name),
               not_slower(), times)
    report("10M Adam ≥ 1.5× faster than optax", ("step", "10M", "adam"), fast(1.5), times)
    adam10m = by.get(("step", "10M", "adam"))
    same_traffic = adam10m and adam10m.streams.get("one pass 4r3w")
    for label, best in [("measured in the same repeats", adam10m and adam10m.stream),
                        ("best of the run", ceiling),
                        ("the same 28 B/param, 4 reads and 3 writes in one loop, in the same "
                         "repeats", same_traffic)]:
        if not best:
            continue

        def share(r, c, best=best):
            return BYTES_PER_PARAM["adam"] * 1e7 / r.values[c] / 1e9 / best

        report(f"10M Adam ≥ 70% of the streaming ceiling ({label}: {best:.0f} GB/s)",
               ("step", "10M", "adam"), lambda r, c, share=share: share(r, c) >= 0.7,
               lambda r, c, share=share: f"{100 * share(r, c):.0f}%")
    report("MLP train step within 5% of optax or faster",
           ("train", "mlp 784-512-512-10, batch 128", "adam"),
           not_slower(1.05),
           lambda r, c: f"{r.ratio(c, BASELINE):.2f}")
    return lines


def main(argv: Sequence[str] | None = None) -> str:
    """Runs the selected benchmarks and returns (and prints) the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"optimizers, comma-separated: {', '.join(OPTIMIZERS)}")
    parser.add_argument("--case", help=f"cases, comma-separated: {', '.join(ALL_CASES)}, "
                                       "or step, compile")
    parser.add_argument("--contenders", help="contenders, comma-separated (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    parser.add_argument("--compile-repeats", type=int, help="repeats of compile timings "
                        "(default: --repeats)")
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="minimum seconds of one repeat of one contender (default 0.2)")
    parser.add_argument("--min-steps", type=int, default=10,
                        help="minimum steps of one repeat (default 10)")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="statistic over repeats (default median; min = least disturbed)")
    parser.add_argument("--quick", action="store_true",
                        help="skip the slow compiles: optax and plain fnn at 5000 leaves "
                             "(~50 s a repeat each)")
    parser.add_argument("--no-torch", action="store_true", help="leave torch.optim out")
    parser.add_argument("--torch-threads", type=int,
                        help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--out", help="also write the report (markdown) to this file")
    args = parser.parse_args(argv)

    timing.STATISTIC = args.stat
    if args.torch_threads and TORCH_CONTENDERS and not args.no_torch:
        import torch

        torch.set_num_threads(args.torch_threads)
    optimizers = parse_list(args.only, OPTIMIZERS, "optimizer")
    cases = parse_list(args.case, ALL_CASES, "case", ALIASES)
    every = {**JAX_CONTENDERS, **({} if args.no_torch else TORCH_CONTENDERS)}
    chosen = parse_list(args.contenders, list(every), "contender")
    jax_contenders = {c: JAX_CONTENDERS[c] for c in chosen if c in JAX_CONTENDERS}
    step_contenders = {c: every[c] for c in chosen}
    columns = list(step_contenders)
    fnn_names = [c for c in jax_contenders if c not in (BASELINE, "no-op")]
    compile_repeats = args.compile_repeats or args.repeats

    def progress(text: str) -> None:
        print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)

    header = [
        f"Date: {datetime.date.today().isoformat()}; machine: {cpu_model()}; {versions()}.",
        "Command: `" + shlex.join(["python", "benchmarks/run_all.py",
                                   *(sys.argv[1:] if argv is None else argv)]) + "`",
        f"{args.stat.capitalize()}s of {args.repeats} interleaved repeats "
        f"(compile: {compile_repeats}), each ≥ {args.min_steps} steps and ≥ {args.min_time} s; "
        "noise = ±half the (max − min) spread of the samples relative to their median (worst "
        "JAX contender of the row).",
    ]
    problems = check_numerics(optimizers, jax_contenders)
    header.append("Numerics: " + ("; ".join(problems) if problems else
                                  f"every JAX contender matches {BASELINE} after 3 steps "
                                  "(relative 1e-5) for " + ", ".join(optimizers) + "."))

    rows: list[Row] = []
    ceiling = None
    if "stream" in cases:
        progress("streaming ceiling")
        ceiling, lines = stream_ceiling(args.repeats, args.min_time, args.min_steps,
                                        with_torch=bool(TORCH_CONTENDERS) and not args.no_torch)
        header.append(f"Streaming ceiling: {ceiling:.1f} GB/s, the best {args.stat} GB/s of the "
                      "kernels in benchmarks/stream.py (float32, in place, interleaved): "
                      + "; ".join(lines) + ".")
    for case in STEP_CASES:
        if case not in cases:
            continue
        progress(f"step {case}: {', '.join(optimizers)}")
        rows += step_rows(case, optimizers, step_contenders, args.repeats, args.min_time,
                          args.min_steps, noise_of=list(jax_contenders),
                          with_stream=case == "10M")
        if case == "10M" and "adam" in optimizers:
            progress("step 10M: adam, not donated")
            rows += step_rows(case, ["adam"], jax_contenders, args.repeats, args.min_time,
                              args.min_steps, donate=False)
    leaf_counts = [n for n in COMPILE_LEAVES if f"compile:{n}" in cases]
    if leaf_counts and "adam" in optimizers:
        progress(f"compile at {leaf_counts} leaves")
        rows += compile_rows(leaf_counts, jax_contenders, compile_repeats,
                             QUICK_SKIP if args.quick else None)
    if "train" in cases and "adam" in optimizers:
        progress("train step")
        train, reference = train_rows(jax_contenders, args.repeats, args.min_time,
                                      args.min_steps)
        rows += train
        header.append(f"Train step floor (same step, plain SGD written inline, no optimizer "
                      f"library): {reference * 1e3:.3f} ms.")

    streams = [r.stream for r in rows if r.stream]
    if streams:
        ceiling = max([ceiling or 0.0, *streams])
        header.append("The 10M rows also ran the JAX scale, triad and one-pass kernels at 10M in "
                      "their own interleaved repeats; column `stream GB/s` is the best of them "
                      f"there (the ceiling of the run, best of all: {ceiling:.1f} GB/s).")
    header.append(f"Cells: {args.stat} ms per step (achieved GB/s) or s of trace + lower + "
                  f"compile ({args.stat} s of each stage); ratio columns: median over repeats of "
                  f"the per-repeat ratio contender / {BASELINE} (paired samples of the same "
                  "interleaved repeat), < 1 is faster than optax.")
    parts = ["\n".join(header), markdown(rows, columns, BASELINE)]
    goals = targets(rows, ceiling, fnn_names)
    if goals:
        parts.append("Issue 7 and 15 targets (speedup = 1 / the ratio column; ✗ (within noise): "
                     "missed by less than the row's noise):\n" + "\n".join(goals))
    report = "\n\n".join(parts) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    return report


if __name__ == "__main__":
    main()
