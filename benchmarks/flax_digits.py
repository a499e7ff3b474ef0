"""The main job written the way a Flax user would: linen + optax, one jitted step per batch.

Trains the MLP of ``python -m fnn`` (64-256-256-10 with BatchNorm and Dropout,
batch 64, 30 epochs) on the same digits split with SGD, Momentum, AdaGrad,
RMSProp and Adam, and prints a table like the CLI's plus the total wall time
(imports excluded, compilation included). Compare with::

    python -m fnn --no-plot          # prints its own total
    python benchmarks/flax_digits.py

Requires the ``bench`` extra (flax, optax): ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from fnn import data


class MLP(nn.Module):
    hidden: int = 256
    rate: float = 0.2

    @nn.compact
    def __call__(self, x, train: bool):
        for _ in range(2):
            x = nn.Dense(self.hidden)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.relu(x)
            x = nn.Dropout(self.rate, deterministic=not train)(x)
        return nn.Dense(10)(x)


class State(train_state.TrainState):
    batch_stats: dict


OPTIMIZERS = {
    "sgd": lambda: optax.sgd(0.1),
    "momentum": lambda: optax.sgd(0.01, momentum=0.9),
    "adagrad": lambda: optax.adagrad(0.05, initial_accumulator_value=0.0, eps=1e-7),
    "rmsprop": lambda: optax.rmsprop(1e-3, decay=0.99),
    "adam": lambda: optax.adam(1e-3),
}


def run(name: str, x_train, y_train, x_val, y_val, epochs: int, batch_size: int, seed: int):
    start = time.perf_counter()
    model = MLP()
    key = jax.random.key(seed)
    variables = model.init(key, x_train[:1], train=False)
    state = State.create(apply_fn=model.apply, params=variables["params"],
                         batch_stats=variables["batch_stats"], tx=OPTIMIZERS[name]())

    @jax.jit
    def train_step(state, x, y, key):
        def loss_fn(params):
            logits, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                rngs={"dropout": key}, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads)
        return state.replace(batch_stats=updates["batch_stats"]), loss

    @jax.jit
    def accuracy(state, x, y):
        logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x,
                                train=False)
        return jnp.mean(jnp.argmax(logits, -1) == y)

    rng = np.random.default_rng(seed)
    steps = 0
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        losses = []
        for i in range(0, len(order), batch_size):
            index = order[i:i + batch_size]
            state, loss = train_step(state, x_train[index], y_train[index],
                                     jax.random.fold_in(key, steps))
            losses.append(loss)
            steps += 1
    final_loss = float(np.mean(jax.device_get(losses)))
    val_accuracy = float(accuracy(state, x_val, y_val))
    seconds = time.perf_counter() - start
    return final_loss, val_accuracy, seconds, steps / seconds


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    x, y = data.load_digits()
    key = jax.random.key(args.seed)
    (x_train, y_train), (x_val, y_val) = data.train_val_split(key, (x, y), 0.2)
    prep = data.standardize(x_train)
    x_train, x_val = np.asarray(prep(x_train)), np.asarray(prep(x_val))
    total = time.perf_counter()
    print(f"{'optimizer':10} {'train loss':>10} {'val acc':>8} {'time (s)':>9} {'steps/s':>8}")
    for name in OPTIMIZERS:
        loss, acc, seconds, rate = run(name, x_train, y_train, x_val, y_val, args.epochs,
                                       args.batch_size, args.seed)
        print(f"{name:10} {loss:10.4f} {acc:8.4f} {seconds:9.2f} {rate:8.0f}")
    total = time.perf_counter() - total
    print(f"total wall time (Flax linen + optax): {total:.2f} s")
    return total


if __name__ == "__main__":
    main()
