"""fit throughput from streamed batches against the in-memory scanned epoch, on the digits MLP.

Model and data: the main job's MLP (64-256-256-10 with BatchNorm and Dropout,
``fnn.cli.mlp``), Adam 1e-3, batch 64, on the digits training split (1437
examples, 23 steps per epoch), float32. Contenders, each one ``fit`` call of
``--epochs`` epochs per repeat:

* ``in memory``: ``fit(..., (x, y), batch_size=64)``: the data on the device,
  one compiled ``lax.scan`` program per epoch (the fast path);
* ``generator kK``: ``fit(..., lambda epoch: generator, steps_per_call=K)``: a
  Python generator yields host NumPy batches (``fnn.data.batches``, in the
  in-memory epoch's order), checked and moved to the device by the prefetch
  thread, K steps per compiled call;
* ``stream=True``: the host arrays streamed by fit itself (as for a memmap).

Throughput is steps per second after the first epoch (which compiles), from
``history["time"]`` (``fnn.train.steps_per_second``). Repeats are interleaved
with the order rotated each repeat (see ``timing.py``); reported are the
median over repeats and the median of the per-repeat ratios to ``in memory``.
The goal: the generator within 10% of in memory (ratio >= 0.9).

    PYTHONPATH=. python benchmarks/stream_throughput.py --repeats 7 --epochs 40
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from timing import rotated

import optimizers as opt
from fnn import cli, data, train

BATCH = 64


def problem():
    x, y = data.load_digits()
    (x_train, y_train), _ = data.train_val_split(jax.random.key(0), (x, y), 0.2)
    x_train = data.standardize(x_train)(x_train)
    x_host, y_host = np.asarray(x_train, np.float32), np.asarray(y_train, np.int32)
    model = cli.mlp(256, 0.2, 10)
    _, params, model_state = model.init(jax.random.key(1), (-1, 64), jnp.float32)
    loss_fn, _ = train.classifier(model)
    tx = opt.adam(1e-3)
    return (x_host, y_host), loss_fn, tx, train.init_train_state(params, model_state, tx)


def contenders(host, loss_fn, tx, state, key, epochs, steps_per_call):
    common = dict(key=key, epochs=epochs, progress=False)

    def in_memory():
        return train.fit(loss_fn, tx, state, host, batch_size=BATCH, **common)[1]

    def generator(k):
        def factory(epoch):  # the in-memory epoch's order: the first half of split(fold_in(key, e))
            order_key = jax.random.split(jax.random.fold_in(key, epoch))[0]
            return data.batches(order_key, host, BATCH)

        return lambda: train.fit(loss_fn, tx, state, factory, steps_per_call=k, **common)[1]

    def streamed():
        return train.fit(loss_fn, tx, state, host, batch_size=BATCH, stream=True,
                         steps_per_call=steps_per_call[-1], **common)[1]

    runs = {"in memory": in_memory}
    runs.update({f"generator k{k}": generator(k) for k in steps_per_call})
    runs["stream=True"] = streamed
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--steps-per-call", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    host, loss_fn, tx, state = problem()
    steps = -(-len(host[0]) // BATCH) if len(host[0]) % BATCH != 1 else len(host[0]) // BATCH
    runs = contenders(host, loss_fn, tx, state, jax.random.key(2), args.epochs,
                      args.steps_per_call)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up: imports, first compilations, thread start-up
        run()
    for r in range(args.repeats):
        for name in rotated(list(runs), r):
            rates[name].append(train.steps_per_second(runs[name](), steps))
    base = rates["in memory"]
    print(f"digits MLP 64-256-256-10 (BatchNorm, Dropout), Adam, batch {BATCH}, {steps} steps "
          f"per epoch, {args.epochs} epochs per fit, {args.repeats} interleaved repeats, "
          f"{jax.default_backend()}")
    print("| contender | steps/s (median) | min … max | ratio to in memory (median) |")
    print("|---|---|---|---|")
    for name, xs in rates.items():
        ratio = statistics.median(x / b for x, b in zip(xs, base))
        print(f"| {name} | {statistics.median(xs):.0f} | {min(xs):.0f} … {max(xs):.0f} | "
              f"{ratio:.3f} |")


if __name__ == "__main__":
    main()
