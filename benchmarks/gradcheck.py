"""Gradient checkers side by side on a 784-1024-384-10 tanh MLP (1.2M float64 params, batch 32).

Times, in one process and interleaved, each checker from a cold start (a fresh
loss function and ``jax.clear_caches()``, so tracing and compilation are
included every time) on the same softmax cross-entropy loss:

* ``fnn.gradcheck.check_grads(mode="directional")``: reverse and forward mode
  against centered differences along 2 random unit directions per leaf; reports
  the relative error of each of the 6 leaves;
* ``jax.test_util.check_grads`` with ``modes=("rev",)`` and with its default
  ``modes=("fwd", "rev")`` (the like-for-like row: fnn checks both modes), step
  eps=1e-5 as fnn's (its float64 default 1e-4 fails this correct model); one
  verdict;
* ``torch.autograd.gradcheck(fast_mode=True)`` (if torch is installed): one verdict.

Prints the median and min of the cold runs and each checker's median time over
fnn's (the median of the per-repeat ratios, robust to slow phases of a shared
machine), then fnn's per-leaf report. Run::

    python benchmarks/gradcheck.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from fnn.gradcheck import check_grads  # noqa: E402

SIZES = [784, 1024, 384, 10]


def problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = [{"w": rng.normal(size=(a, b)) / np.sqrt(a), "b": rng.normal(size=b) * 0.1}
              for a, b in zip(SIZES[:-1], SIZES[1:])]
    x = rng.normal(size=(32, SIZES[0]))
    y = np.arange(32) % SIZES[-1]
    return params, x, y


def make_jax_loss(x, y):
    x, y = jnp.asarray(x), jnp.asarray(y)

    def loss(params):
        h = x
        for i, layer in enumerate(params):
            h = h @ layer["w"] + layer["b"]
            if i < len(params) - 1:
                h = jnp.tanh(h)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), y[:, None], 1))

    return loss


def run_fnn(params, x, y):
    report = check_grads(make_jax_loss(x, y), params, mode="directional")
    return report.passed, len(report.errors), report


def jax_checker(modes):
    def run(params, x, y):
        from jax.test_util import check_grads as jax_check_grads

        try:
            jax_check_grads(make_jax_loss(x, y), (jax.tree_util.tree_map(jnp.asarray, params),),
                            order=1, modes=modes, eps=1e-5)
        except AssertionError:
            return False, 1, None
        return True, 1, None
    return run


def run_torch(params, x, y):
    import torch

    tensors = [torch.tensor(p[k], dtype=torch.float64, requires_grad=True)
               for p in params for k in ("w", "b")]
    tx, ty = torch.tensor(x), torch.tensor(y)

    def loss(*flat):
        h = tx
        for i in range(0, len(flat), 2):
            h = h @ flat[i] + flat[i + 1]
            if i < len(flat) - 2:
                h = torch.tanh(h)
        return torch.nn.functional.cross_entropy(h, ty)

    return torch.autograd.gradcheck(loss, tensors, fast_mode=True), 1, None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    params, x, y = problem()
    contenders = {"fnn check_grads (directional: rev + fwd, per leaf)": run_fnn,
                  "jax.test_util.check_grads (rev)": jax_checker(("rev",)),
                  "jax.test_util.check_grads (fwd + rev, its default)": jax_checker(("fwd", "rev"))}
    try:
        import torch

        torch.set_num_threads(2)
        contenders["torch.autograd.gradcheck (fast_mode)"] = run_torch
    except ImportError:
        print("torch not installed: skipping torch.autograd.gradcheck")
    run_fnn(params, x, y)  # warm up the libraries themselves (first-call imports)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    verdicts = {}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            jax.clear_caches()  # cold start: tracing and compilation included every time
            start = time.perf_counter()
            verdicts[name] = run(params, x, y)
            times[name].append(time.perf_counter() - start)
    fnn_name = next(iter(contenders))
    n_params = sum(a * b + b for a, b in zip(SIZES[:-1], SIZES[1:]))
    print(f"MLP {'-'.join(map(str, SIZES))}, tanh, float64, batch 32, {n_params:,} params; "
          f"{args.repeats} cold runs each, interleaved; jax {jax.__version__}\n")
    print("| checker | median (s) | min (s) | time / fnn | passed | leaves reported |\n"
          "|---|---:|---:|---:|---|---:|")
    for name in contenders:
        passed, leaves, _ = verdicts[name]
        ratio = statistics.median(t / f for t, f in zip(times[name], times[fnn_name]))
        print(f"| {name} | {statistics.median(times[name]):.2f} | {min(times[name]):.2f} | "
              f"{ratio:.2f} | {passed} | {leaves} |")
    print(f"\nfnn's report:\n{verdicts[fnn_name][2]}")


if __name__ == "__main__":
    main()
