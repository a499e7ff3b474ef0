"""Full MLP train step: the same plain-JAX model and loss, only the optimizer differs.

Model: 784-512-512-10 dense layers (``x @ w + b``, ReLU) written with jnp,
softmax cross-entropy on integer labels, batch 128 of fixed random data, Adam
(lr 1e-3). The step ``loss, grads = value_and_grad(loss)(params, x, y)``, the
optimizer update and ``apply_updates`` are one jitted function with params and
optimizer state donated and threaded from step to step. A packed contender's
model reads its params through ``opt.unpack`` (gradients arrive packed).
A ``fwd+bwd only`` reference (the same step with ``p ← p − 1e-3 g`` written
inline, no optimizer library) shows the floor the optimizer adds to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from contenders import JaxContender
from optimizer_step import MLP_SIZES, mlp_shapes
from timing import Row, interleaved, median, spread

import optimizers as opt

BATCH = 128


def mlp_params(seed: int = 0) -> dict[str, jax.Array]:
    """Glorot-uniform weights and zero biases, named w0, b0, w1, b1, ..."""
    rng = np.random.default_rng(seed)
    params = {}
    for i, shape in enumerate(mlp_shapes()[::2]):
        limit = np.sqrt(6.0 / sum(shape))
        params[f"w{i}"] = rng.uniform(-limit, limit, shape).astype(np.float32)
        params[f"b{i}"] = np.zeros(shape[1], np.float32)
    return params


def mlp_loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of the MLP on integer labels."""
    n_layers = len(MLP_SIZES) - 1
    for i in range(n_layers):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        if i < n_layers - 1:
            x = jax.nn.relu(x)
    logp = jax.nn.log_softmax(x)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def batch(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """A fixed random batch: inputs (128, 784) and labels (128,)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, MLP_SIZES[0]), dtype=np.float32)
    y = rng.integers(0, MLP_SIZES[-1], BATCH).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def train_runner(contender: JaxContender | None, name: str = "adam") -> Callable[[int], None]:
    """``run(n)``: n jitted train steps (``contender=None``: plain SGD written inline)."""
    x, y = batch()
    tree = {k: jnp.asarray(v) for k, v in mlp_params().items()}
    if contender is None:
        def step(params, state, x, y):
            loss, grads = jax.value_and_grad(mlp_loss)(params, x, y)
            return jax.tree_util.tree_map(lambda p, g: p - 1e-3 * g, params, grads), state, loss

        params, state = tree, ()
    else:
        params = contender.prepare(tree)
        loss_fn = (lambda p, x, y: mlp_loss(opt.unpack(p), x, y)) if contender.packed else mlp_loss
        _, tx = contender.step_fn(name)
        state = tx.init(params)

        def step(params, state, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            if contender.own_step:
                return (*opt.step(tx, grads, state, params), loss)
            updates, state = tx.update(grads, state, params)
            return contender.apply_updates(params, updates), state, loss

    jitted = jax.jit(step, donate_argnums=(0, 1))
    carry = [params, state]

    def run(n: int) -> None:
        p, s = carry
        for _ in range(n):
            p, s, loss = jitted(p, s, x, y)
        jax.block_until_ready((p, s, loss))
        carry[:] = [p, s]

    return run


REFERENCE = "fwd+bwd only"


def train_rows(contenders: Mapping[str, JaxContender], repeats: int, min_time: float,
               min_steps: int) -> tuple[list[Row], float]:
    """One row (Adam train step, ms per step) and the median of the fwd+bwd-only reference."""
    runners = {c: train_runner(contender) for c, contender in contenders.items()}
    runners[REFERENCE] = train_runner(None)
    samples = interleaved(runners, repeats, min_time, min_steps)
    reference = median(samples.pop(REFERENCE))
    row = Row("train", f"mlp {'-'.join(map(str, MLP_SIZES))}, batch {BATCH}", "adam", "ms")
    for c, xs in samples.items():
        row.values[c] = median(xs)
        row.samples[c] = xs
        row.noise = max(row.noise, spread(xs))
    return [row], reference
