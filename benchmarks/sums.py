"""The gradient sums behind ``global_norm`` and ``skip_nonfinite``: kernel vs XLA reductions.

``optimizers._sums.squares_and_zeros`` sums Σx² and Σx·0 of a list of float32 leaves
with one kernel call over XLA's intra-op thread pool; ``_sums._reference`` is the same
sums as jnp code (small leaves concatenated, one XLA reduction per leaf or group),
which is what runs off the CPU and with ``FNN_FUSED=0``. Both jitted, on the shapes of
``run_all.py``, interleaved repeats (``timing.interleaved``), medians and the median
per-repeat ratio::

    python benchmarks/sums.py --repeats 15
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp

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
        ratio = statistics.median(a / b for a, b in zip(samples["kernel"], samples["xla"]))
        print(f"| {case} | {statistics.median(samples['kernel']) * 1e3:.2f} | "
              f"{statistics.median(samples['xla']) * 1e3:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
