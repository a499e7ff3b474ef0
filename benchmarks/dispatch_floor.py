"""What any plain-tree optimizer step costs before it computes anything: JAX's dispatch and compile.

A step over a params tree of L leaves passes at least L params and L gradients into a
jitted call and L params out. This script times a jitted, donated function that does
nothing else, ``identity(params, grads) -> params`` (no optimizer state at all), against
optax's Adam step on the same tree, and the trace + lower + compile of that identity and
of ``identity(params, state, grads) -> (params, state)`` with Adam's state (two moment
trees shaped like the params, as the optimizer protocol keeps them). No plain-tree step
can beat optax by more than optax / identity, or compile in less than the identity
with its state does::

    python benchmarks/dispatch_floor.py --leaves 1000 --compile-leaves 1000,5000
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

try:
    from . import timing
    from .contenders import JAX_CONTENDERS
except ImportError:  # run as a script
    import timing
    from contenders import JAX_CONTENDERS


def step_floor(leaves: int, size: int, repeats: int) -> None:
    params = [np.full((size,), 0.5, np.float32) for _ in range(leaves)]
    grads = [np.full((size,), 1e-3, np.float32) for _ in range(leaves)]
    identity = jax.jit(lambda p, g: p, donate_argnums=(0,))
    device_grads = [jnp.asarray(g) for g in grads]
    carry = [[jnp.asarray(p) for p in params]]

    def run_identity(n: int) -> None:
        for _ in range(n):
            carry[0] = identity(carry[0], device_grads)
        jax.block_until_ready(carry[0])

    runners = {"optax": JAX_CONTENDERS["optax"].step_runner("adam", params, grads),
               "identity": run_identity}
    samples = timing.interleaved(runners, repeats, 0.2, 5)
    ratio = timing.paired_ratio(samples["optax"], samples["identity"])
    print(f"{leaves} leaves x {size}: optax Adam {statistics.median(samples['optax']) * 1e3:.2f} "
          f"ms, identity(params, grads) {statistics.median(samples['identity']) * 1e3:.2f} ms; "
          f"optax / identity {ratio:.2f} (the most any plain-tree step can gain)")


def compile_floor(leaves: int, size: int) -> None:
    shapes = [jax.ShapeDtypeStruct((size,), jnp.float32) for _ in range(leaves)]
    state = jax.eval_shape(optax.adam(1e-3).init, shapes)
    start = time.perf_counter()
    jax.jit(lambda p, g: p, donate_argnums=(0,)).lower(shapes, shapes).compile()
    alone = time.perf_counter() - start
    start = time.perf_counter()
    jax.jit(lambda p, s, g: (p, s), donate_argnums=(0, 1)).lower(shapes, state, shapes).compile()
    print(f"{leaves} leaves: trace + lower + compile of identity(params, grads) {alone:.2f} s, "
          f"with Adam's state {time.perf_counter() - start:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--compile-leaves", default="1000,5000")
    args = parser.parse_args()
    step_floor(args.leaves, args.size, args.repeats)
    for leaves in (int(x) for x in args.compile_leaves.split(",") if x):
        compile_floor(leaves, args.size)


if __name__ == "__main__":
    main()
