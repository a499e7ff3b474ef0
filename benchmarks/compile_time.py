"""Compile time of the Adam step at many leaves: trace, lower and compile timed apart.

For each leaf count (1,000 float32 parameters per leaf) and contender, a fresh
step function (``tx.update`` + ``apply_updates``, params and state donated) is
jitted and compiled ahead of time with JAX's AOT stages, each timed on its own::

    traced = jax.jit(step, donate_argnums=(0, 1)).trace(params, state, grads)
    lowered = traced.lower()        # jaxpr -> StableHLO
    compiled = lowered.compile()    # XLA:CPU

``jax.clear_caches()`` runs before every measurement and the step is a new
Python function each time, so nothing is served from JAX's tracing, lowering or
compilation caches (the persistent compilation cache is off unless configured).
One throwaway compile per contender warms up the process first. Contenders are
interleaved per repeat; the table reports the median total (trace + lower +
compile) with the median of each stage in parentheses. A leaf count where a
compile takes more than 10 s (optax and plain fnn at 5000 leaves: ~50 s) gets
at most 3 repeats; ``--quick`` skips those two. The optimizer state is
created (``tx.init``) outside the timer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from contenders import JaxContender
from timing import Row, median, rotated, spread

STAGES = ("trace", "lower", "compile")
COMPILE_LEAVES = (10, 100, 1000, 5000)


def compile_once(contender: JaxContender, n_leaves: int, leaf_size: int = 1000,
                 name: str = "adam") -> dict[str, float]:
    """Seconds of each AOT stage for one fresh step on ``n_leaves`` leaves."""
    jax.clear_caches()
    leaf = np.zeros((leaf_size,), np.float32)
    params = contender.prepare([jax.numpy.array(leaf) for _ in range(n_leaves)])
    grads = contender.prepare([jax.numpy.array(leaf) for _ in range(n_leaves)])
    step, tx = contender.step_fn(name)
    state = tx.init(params)
    jitted = jax.jit(step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    traced = jitted.trace(params, state, grads)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    lowered.compile()
    t3 = time.perf_counter()
    return {"trace": t1 - t0, "lower": t2 - t1, "compile": t3 - t2}


def compile_rows(leaf_counts: Sequence[int], contenders: Mapping[str, JaxContender],
                 repeats: int, skip: Mapping[int, Sequence[str]] | None = None,
                 slow: float = 10.0, slow_repeats: int = 3) -> list[Row]:
    """One row per leaf count: median compile seconds per contender, interleaved repeats.

    Args:
      leaf_counts: numbers of 1k-parameter leaves.
      contenders: name -> JAX contender.
      repeats: samples per contender and leaf count.
      skip: leaf count -> contender names not to measure there (``--quick``).
      slow, slow_repeats: a leaf count where some contender's first compile took
        more than ``slow`` seconds gets at most ``slow_repeats`` repeats.
    """
    skip = skip or {}
    for c in contenders.values():  # one-time process warm-up (XLA backend, MLIR context)
        compile_once(c, 2)
    rows = []
    for n in leaf_counts:
        names = [c for c in contenders if c not in skip.get(n, ())]
        samples: dict[str, list[dict[str, float]]] = {c: [] for c in names}
        for r in range(repeats):
            if r >= slow_repeats and any(sum(x[0].values()) > slow for x in samples.values()):
                break  # long compiles vary little; fewer repeats keep the suite short
            for c in rotated(names, r):
                samples[c].append(compile_once(contenders[c], n))
        row = Row("compile", f"{n} leaves x 1k", "adam: trace+lower+compile", "s")
        for c, xs in samples.items():
            totals = [sum(x.values()) for x in xs]
            row.values[c] = median(totals)
            row.samples[c] = totals
            row.notes[c] = " + ".join(f"{median(x[s] for x in xs):.2g}" for s in STAGES)
            row.noise = max(row.noise, spread(totals))
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """``python benchmarks/compile_time.py [--leaves 1000,5000] [--repeats 1]``: fnn step,
    fnn update (+ ``p + u``) and optax, each stage's median seconds per leaf count."""
    import argparse

    from contenders import JAX_CONTENDERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", default="1000,5000", help="comma-separated leaf counts")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    names = ("fnn step", "fnn p+u", "optax")
    rows = compile_rows([int(n) for n in args.leaves.split(",")],
                        {n: JAX_CONTENDERS[n] for n in names}, args.repeats)
    for row in rows:
        for name in names:
            print(f"{row.case:>18}  {name:9}: {row.values[name]:7.2f} s  "
                  f"(trace + lower + compile: {row.notes[name]})", flush=True)


if __name__ == "__main__":
    main()
