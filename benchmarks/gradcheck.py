"""Gradient checkers side by side on a 784-1024-384-10 tanh MLP (1.2M float64 params, batch 32).

Times, in one process and interleaved, each checker from a cold start (a fresh
function, so compilation is included) on the same loss:

* ``fnn.gradcheck.check_grads(mode="directional")``: per-leaf errors;
* ``jax.test_util.check_grads(order=1, modes=("rev",))``: one verdict;
* ``torch.autograd.gradcheck(fast_mode=True)`` (if torch is installed): one verdict.

Run::

    python benchmarks/gradcheck.py [--repeats 5]
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
    return report.passed, len(report.errors)


def run_jax(params, x, y):
    from jax.test_util import check_grads as jax_check_grads

    try:  # the same step as fnn's (its default, 1e-4 for float64, fails this correct model)
        jax_check_grads(make_jax_loss(x, y), (jax.tree_util.tree_map(jnp.asarray, params),),
                        order=1, modes=("rev",), eps=1e-5)
    except AssertionError:
        return False, 1
    return True, 1


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

    return torch.autograd.gradcheck(loss, tensors, fast_mode=True), 1


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    params, x, y = problem()
    contenders = {"fnn check_grads (directional, per leaf)": run_fnn,
                  "jax.test_util.check_grads": run_jax}
    try:
        import torch  # noqa: F401

        contenders["torch.autograd.gradcheck (fast_mode)"] = run_torch
    except ImportError:
        print("torch not installed: skipping torch.autograd.gradcheck")
    times: dict[str, list[float]] = {name: [] for name in contenders}
    verdicts = {}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            jax.clear_caches()  # cold start: compilation included every time
            start = time.perf_counter()
            verdicts[name] = run(params, x, y)
            times[name].append(time.perf_counter() - start)
    print(f"MLP {'-'.join(map(str, SIZES))}, tanh, float64, batch 32, "
          f"{sum(a * b + b for a, b in zip(SIZES[:-1], SIZES[1:])):,} params; "
          f"median of {args.repeats} cold runs\n")
    print("| checker | median (s) | passed | leaves reported |\n|---|---:|---|---:|")
    for name in contenders:
        passed, leaves = verdicts[name]
        print(f"| {name} | {statistics.median(times[name]):.2f} | {passed} | {leaves} |")


if __name__ == "__main__":
    main()
