"""The gradient sums behind ``global_norm`` and ``skip_nonfinite``: kernel vs XLA reductions.

``optimizers._sums.squares_and_zeros`` sums Σx² and Σx·0 of a list of float32 leaves
with one kernel call over XLA's intra-op thread pool; ``_sums._reference`` is the same
sums as jnp code (small leaves concatenated, one XLA reduction per leaf or group),
which is what runs off the CPU and with ``FNN_FUSED=0``. Both jitted, on the shapes of
``run_all.py``, interleaved repeats (``timing.interleaved``), medians and the median
per-repeat ratio.

A second table times what the sums cost inside a step: Adam, ``skip_nonfinite(adam)``
and ``chain(clip_by_global_norm, adam)`` through ``optimizers.step``, jitted and donated,
with the gradients made inside the step (``g = p · x``) as a train step makes them::

    python benchmarks/sums.py --repeats 15
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp

import optimizers
from optimizers import _sums

try:
    from . import timing
except ImportError:  # run as a script
    import timing

SHAPES = {"10M": (10_000_000, 1), "100x100k": (100_000, 100), "1000x1k": (1000, 1000)}


def runner(fn, leaves) -> timing.Runner:
    def run(n: int) -> None:
        out = None
        for _ in range(n):
            out = fn(leaves)
        jax.block_until_ready(out)

    return run


def step_runner(tx, size: int, count: int) -> timing.Runner:
    params = [jnp.full((size,), 0.5, jnp.float32) for _ in range(count)]
    x = jnp.full((size,), 1e-3, jnp.float32)

    def train_step(params, state, x):
        grads = [p * x for p in params]
        return optimizers.step(tx, grads, state, params)

    step = jax.jit(train_step, donate_argnums=(0, 1))
    box = [params, tx.init(params)]

    def run(n: int) -> None:
        for _ in range(n):
            box[0], box[1] = step(box[0], box[1], x)
        jax.block_until_ready(box[0])

    return run


def steps_table(repeats: int, min_time: float) -> None:
    print("\n| case | adam ms | skip ms | clip ms | skip / adam | clip / adam |")
    print("|---|---:|---:|---:|---:|---:|")
    for case, (size, count) in SHAPES.items():
        runners = {
            "adam": step_runner(optimizers.adam(1e-3), size, count),
            "skip": step_runner(optimizers.skip_nonfinite(optimizers.adam(1e-3)), size, count),
            "clip": step_runner(optimizers.chain(optimizers.clip_by_global_norm(1.0),
                                                 optimizers.adam(1e-3)), size, count)}
        samples = timing.interleaved(runners, repeats, min_time, 5)
        ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
        ratio = {k: timing.paired_ratio(samples[k], samples["adam"]) for k in ("skip", "clip")}
        print(f"| {case} | {ms['adam']:.2f} | {ms['skip']:.2f} | {ms['clip']:.2f} | "
              f"{ratio['skip']:.2f} | {ratio['clip']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--min-time", type=float, default=0.2)
    args = parser.parse_args()
    kernel = jax.jit(lambda xs: _sums.squares_and_zeros(xs)[0])
    xla = jax.jit(lambda xs: _sums._reference(*xs))
    print("| case | kernel ms | XLA reductions ms | kernel / XLA |")
    print("|---|---:|---:|---:|")
    for case, (size, count) in SHAPES.items():
        leaves = [jnp.full((size,), 0.5, jnp.float32) for _ in range(count)]
        # both must agree before they are timed
        want = float(jnp.sum(jnp.stack([jnp.sum(x.astype(jnp.float32) ** 2) for x in leaves])))
        for fn in (kernel, xla):
            got = fn(leaves)
            assert abs(float(got[0]) - want) <= 1e-5 * want and float(got[1]) == 0.0, got
        samples = timing.interleaved({"kernel": runner(kernel, leaves), "xla": runner(xla, leaves)},
                                     args.repeats, args.min_time, 5)
        ratio = timing.paired_ratio(samples["kernel"], samples["xla"])
        print(f"| {case} | {statistics.median(samples['kernel']) * 1e3:.2f} | "
              f"{statistics.median(samples['xla']) * 1e3:.2f} | {ratio:.2f} |")
    steps_table(args.repeats, args.min_time)


if __name__ == "__main__":
    main()
