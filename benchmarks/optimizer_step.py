"""Optimizer step benchmark and the streaming ceiling it is compared against.

The step is ``updates, state = tx.update(grads, state, params)`` followed by
``apply_updates``, jitted with params and state donated and threaded from one
step to the next (gradients are a fixed input). The cases (float32):

* ``10M``: one leaf of 10,000,000 parameters;
* ``100x100k``: 100 leaves of 100,000;
* ``1000x1k``: 1000 leaves of 1,000;
* ``mlp``: the dense weights and biases of a 784-512-512-10 MLP (6 leaves, 669,706).

Achieved GB/s = bytes per parameter × parameters / seconds per step, with SGD
12, Momentum/AdaGrad/RMSProp 20 and Adam/AdamW 28 bytes per float32 parameter
(each of p, g and the moments read once, p and the moments written once).

The ``10M`` case can also run the streaming kernels of ``stream.py`` over
10M-element buffers in the same interleaved repeats, so each row carries a
ceiling measured under the same machine load as its steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from contenders import BYTES_PER_PARAM
from stream import GROUP_KINDS, stream_runner
from timing import Row, interleaved, median, spread

MLP_SIZES = (784, 512, 512, 10)


def mlp_shapes(sizes: Sequence[int] = MLP_SIZES) -> list[tuple[int, ...]]:
    """Weight and bias shapes of a dense MLP, in layer order."""
    shapes: list[tuple[int, ...]] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        shapes += [(n_in, n_out), (n_out,)]
    return shapes


STEP_CASES: dict[str, list[tuple[int, ...]]] = {
    "10M": [(10_000_000,)],
    "100x100k": [(100_000,)] * 100,
    "1000x1k": [(1_000,)] * 1000,
    "mlp": mlp_shapes(),
}


def random_leaves(shapes: Sequence[tuple[int, ...]], seed: int) -> list[np.ndarray]:
    """Float32 standard-normal arrays of the given shapes (host memory)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s, dtype=np.float32) for s in shapes]


def step_rows(case: str, optimizers: Sequence[str], contenders: Mapping[str, Any],
              repeats: int, min_time: float, min_steps: int, donate: bool = True,
              noise_of: Sequence[str] | None = None, with_stream: bool = False) -> list[Row]:
    """One row per optimizer: seconds per step of each contender on ``case`` (with GB/s).

    Args:
      case: a key of :data:`STEP_CASES`.
      optimizers: optimizer names.
      contenders: name -> contender (with ``step_runner``).
      repeats, min_time, min_steps: see :func:`timing.interleaved`.
      donate: donate params and state (False: fresh buffers every step; JAX only).
      noise_of: contenders whose sample spread goes into the row's noise (default all).
      with_stream: also run the streaming kernels over buffers of the case's size
        in the same interleaved repeats; the row's ``stream`` is their best GB/s.
    """
    shapes = STEP_CASES[case]
    leaves, grads = random_leaves(shapes, 0), random_leaves(shapes, 1)
    for g in grads:
        g *= 1e-2
    n_params = sum(int(np.prod(s)) for s in shapes)
    rows = []
    for name in optimizers:
        runners: dict[str, Callable[[int], None]] = {}
        for cname, c in contenders.items():
            run = c.step_runner(name, leaves, grads, donate=donate)
            if run is not None:
                runners[cname] = run
        stream_bytes = {}
        if with_stream:
            for kind in GROUP_KINDS:
                runners[kind], stream_bytes[kind] = stream_runner(kind, n_params)
        samples = interleaved(runners, repeats, min_time, min_steps)
        del runners
        what = name if donate else f"{name}, not donated"
        row = Row("step", case, what, "ms")
        for kind, nbytes in stream_bytes.items():
            row.streams[kind] = nbytes / median(samples.pop(kind)) / 1e9
            row.stream = max(row.stream or 0.0, row.streams[kind])
        for cname, xs in samples.items():
            row.values[cname] = median(xs)
            row.samples[cname] = xs
            gbs = BYTES_PER_PARAM[name] * n_params / row.values[cname] / 1e9
            row.notes[cname] = f"{gbs:.0f} GB/s"
            if noise_of is None or cname in noise_of:
                row.noise = max(row.noise, spread(xs))
        rows.append(row)
    return rows
