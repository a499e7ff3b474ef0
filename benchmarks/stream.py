"""The streaming ceiling: the best memory bandwidth this process achieves on float32 buffers.

Kernels (bytes per element counted as each array read once and written once,
the STREAM convention; writes allocate on x86, so the bus moves more):

* ``scale``: x ← a·x, jitted, x donated (8 B);
* ``triad``: x ← a·x + y, jitted, x donated (12 B);
* ``one pass 4r3w``: s ← s + g[:, None] with s of shape (n, 3), jitted, s
  donated: the traffic of an Adam step (4 reads, 3 writes: 28 B) in one loop;
* ``3 outputs 4r3w``: p, m, v ← p + g, m + g, v + g, jitted, p, m, v donated:
  the same 28 B counted, but XLA:CPU emits one loop per output (no sibling
  fusion), each re-reading g, as it does for an optimizer step's moments;
* ``torch scale`` / ``torch triad``: the same in place with torch
  (``x.mul_(a)``, ``torch.add(y, x, alpha=a, out=x)``), when torch is installed.

Each runs at 10M elements (the size of the ``10M`` step case; its buffers may
partly stay in the last-level cache) and 100M (well beyond it), interleaved
repeats, median per kernel. The ceiling is the best median GB/s of all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from timing import interleaved, median, spread

JAX_KINDS = ("scale", "triad", "one pass 4r3w", "3 outputs 4r3w")
TORCH_KINDS = ("torch scale", "torch triad")
GROUP_KINDS = ("scale", "triad", "one pass 4r3w")  # run beside the 10M optimizer steps
BYTES = {"scale": 8, "triad": 12, "one pass 4r3w": 28, "3 outputs 4r3w": 28, "torch scale": 8,
         "torch triad": 12}


def _jax_kernel(kind: str, n: int) -> tuple[Callable, list[jax.Array], int]:
    """(jitted function, initial inputs, number of leading inputs it returns and donates)."""
    a = jnp.float32(1.0000001)
    if kind == "scale":
        return jax.jit(lambda x: (a * x,), donate_argnums=0), [jnp.ones(n)], 1
    if kind == "triad":
        return jax.jit(lambda x, y: (a * x + y,), donate_argnums=0), [jnp.ones(n), jnp.ones(n)], 1
    if kind == "one pass 4r3w":
        return (jax.jit(lambda s, g: (s + g[:, None],), donate_argnums=0),
                [jnp.ones((n, 3)), jnp.ones(n)], 1)
    if kind == "3 outputs 4r3w":
        return (jax.jit(lambda p, m, v, g: (p + g, m + g, v + g), donate_argnums=(0, 1, 2)),
                [jnp.ones(n) for _ in range(4)], 3)
    raise ValueError(f"unknown kernel {kind!r}")


def _torch_kernel(kind: str, n: int) -> Callable[[], None]:
    import torch

    x, y = torch.ones(n), torch.ones(n)
    if kind == "torch scale":
        return lambda: x.mul_(1.0000001)
    if kind == "torch triad":
        return lambda: torch.add(y, x, alpha=1.0000001, out=x)
    raise ValueError(f"unknown kernel {kind!r}")


def stream_runner(kind: str, n: int) -> tuple[Callable[[int], None], int]:
    """``run(steps)`` of one kernel over ``n``-element float32 buffers, and its bytes per step."""
    if kind in TORCH_KINDS:
        kernel = _torch_kernel(kind, n)

        def run_torch(steps: int) -> None:
            for _ in range(steps):
                kernel()

        return run_torch, BYTES[kind] * n
    fn, carry, n_out = _jax_kernel(kind, n)

    def run(steps: int) -> None:
        args = list(carry)
        for _ in range(steps):
            args = [*fn(*args), *args[n_out:]]
        jax.block_until_ready(args)
        carry[:] = args

    return run, BYTES[kind] * n


def stream_ceiling(repeats: int, min_time: float, min_steps: int, with_torch: bool = True,
                   sizes: Sequence[int] = (10_000_000, 100_000_000)) -> tuple[float, list[str]]:
    """The best median GB/s of the kernels, and one ``"kernel size: GB/s"`` line per kernel."""
    kinds = JAX_KINDS + (TORCH_KINDS if with_torch else ())
    lines, best = [], 0.0
    for n in sizes:  # one size at a time: the 100M buffers take 2 GB
        runners, nbytes = {}, {}
        for kind in kinds:
            runners[kind], nbytes[kind] = stream_runner(kind, n)
        samples = interleaved(runners, repeats, min_time, min_steps)
        del runners
        for kind, xs in samples.items():
            gbs = nbytes[kind] / median(xs) / 1e9
            best = max(best, gbs)
            lines.append(f"{kind} {n // 1_000_000}M {gbs:.0f} (±{50 * spread(xs):.0f}%)")
    return best, lines
