"""One multi-tensor kernel call vs the jnp formula per leaf.

For Adam (with weight decay on every other leaf), RMSProp or Momentum, one jitted
step of a list of float32 leaves, with params and moments donated and threaded
from step to step (gradients fixed), two ways:

* ``multi``: :func:`optimizers._multi.adam_multi` etc., one custom call for all leaves
  (what ``optimizers.step`` runs);
* ``jnp``: the reference formula per leaf (``_fused.adam_reference`` etc.), XLA's loops.

Cases: 1000 leaves × 1k, 100 × 100k, 1 × 10M. Reported: median ms per step over
interleaved repeats (``timing.interleaved``), GB/s (28 bytes per parameter for Adam,
20 for the one-moment rules), and the trace + lower + compile time of each step.
A step is one dispatch of the jitted function: at 1000 leaves it includes passing
~4000 arrays from Python (the same for every contender, as in a real train step).

    PYTHONPATH=. python benchmarks/multi_kernel.py [--kind adam|rmsprop|momentum]
        [--cases 1000x1k,100x100k,1x10M] [--repeats 7] [--min-time 0.3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from timing import Row, interleaved, markdown, median, spread  # noqa: E402

from optimizers import _fused, _multi  # noqa: E402

CASES = {"1000x1k": (1000, 1000), "100x100k": (100, 100_000), "1x10M": (1, 10_000_000)}

# kind -> (multi step, reference, moments, coefficients, bytes per param)
KINDS = {
    "adam": (_multi.adam_multi, _fused.adam_reference, 2,
             lambda: _fused.adam_coefficients(jnp.int32(5), 1e-3, 0.9, 0.999, 1e-8, 1e-4), 28),
    "rmsprop": (_multi.scaled_multi, _fused.scaled_reference, 1,
                lambda: _fused.scaled_coefficients(0.9, 0.1, 1e-3, 1e-8, False), 20),
    "momentum": (_multi.momentum_multi, _fused.momentum_reference, 1,
                 lambda: _fused.momentum_coefficients(0.9, 1e-3, False), 20),
}
DECAY_COLUMN = {"adam": 7}


def steps(kind: str):
    """name -> step(coef, flags, grads, params, *moments) -> (params, *moments)."""
    multi, reference, moments, _, _ = KINDS[kind]
    column = DECAY_COLUMN.get(kind)

    def leaf_coef(coef, flags, i):
        return coef if column is None else coef.at[column].multiply(flags[i])

    def per_leaf(fn):
        def step(coef, flags, grads, params, *state):
            out = [fn(leaf_coef(coef, flags, i), g, p, *(s[i] for s in state))
                   for i, (g, p) in enumerate(zip(grads, params))]
            return tuple([o[k] for o in out] for k in range(1 + moments))
        return step

    return {"multi": multi, "jnp": per_leaf(reference)}


def runner(step, coef, flags, grads, params, state):
    jitted = jax.jit(step, donate_argnums=tuple(range(3, 4 + len(state))))
    t0 = time.perf_counter()
    compiled = jitted.lower(coef, flags, grads, params, *state).compile()
    compile_seconds = time.perf_counter() - t0
    carry = [[jnp.array(x, copy=True) for x in params], *[[jnp.array(x, copy=True) for x in s]
                                                          for s in state]]

    def run(n: int) -> None:
        nonlocal carry
        for _ in range(n):
            carry = list(compiled(coef, flags, grads, *carry))
        jax.block_until_ready(carry)

    return run, compile_seconds


def measure(kind: str, case: str, repeats: int, min_time: float) -> tuple[Row, Row]:
    leaves, size = CASES[case]
    _, _, moments, make_coef, bytes_per_param = KINDS[kind]
    key = jax.random.key(0)
    grads = [jax.random.normal(jax.random.fold_in(key, i), (size,)) for i in range(leaves)]
    params = [jnp.full((size,), 0.5, jnp.float32) for _ in range(leaves)]
    state = [[jnp.zeros((size,), jnp.float32) for _ in range(leaves)] for _ in range(moments)]
    flags = jnp.asarray([(i + 1) % 2 for i in range(leaves)], jnp.float32)
    coef = make_coef()
    runners, compiles = {}, {}
    for name, step in steps(kind).items():
        runners[name], compiles[name] = runner(step, coef, flags, grads, params, state)
    samples = interleaved(runners, repeats, min_time, min_steps=3)
    values = {name: median(s) for name, s in samples.items()}
    gbps = {name: f"{bytes_per_param * leaves * size / v / 1e9:.1f} GB/s"
            for name, v in values.items()}
    step_row = Row("multi_kernel", case, f"{kind} step", "ms", values=values, notes=gbps,
                   noise=max(spread(s) for s in samples.values()), samples=samples)
    compile_row = Row("multi_kernel", case, f"{kind} trace+lower+compile", "s",
                      values=compiles)
    return step_row, compile_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=list(KINDS), default="adam")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.3)
    args = parser.parse_args()
    rows = []
    for case in args.cases.split(","):
        rows += measure(args.kind, case, args.repeats, args.min_time)
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__}: python benchmarks/multi_kernel.py --kind {args.kind}")
    print(markdown(rows, ["multi", "jnp"], baseline="jnp"))


if __name__ == "__main__":
    main()
