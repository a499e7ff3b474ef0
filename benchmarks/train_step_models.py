"""Full train steps of models built from fnn layers: fnn.train vs optax, packed and not.

For each model the same loss function (fnn layers, softmax cross-entropy,
batch 64 of fixed random data) is trained by three contenders in one process:

* ``optax``: ``optax.adam(1e-3)``, ``value_and_grad`` + ``tx.update`` +
  ``optax.apply_updates`` in one jitted step, params and state donated;
* ``fnn``: ``fnn.train.make_train_step(loss_fn, optimizers.adam(1e-3))`` on
  ``init_train_state(..., packed=False)`` (jitted, donated);
* ``fnn packed``: the same on ``init_train_state(..., packed=True)``;
* ``fnn auto``: the same on ``init_train_state(...)`` (``packed=None``: the rule).

Repeats are interleaved (``timing.interleaved``); reported are median ms per
step and the median over repeats of the per-repeat ratio to optax (< 1: faster).

Models (``--models`` picks a subset):

* ``mlp``: 784-512-512-10 dense ReLU MLP, 6 leaves (0.67M params);
* ``mixer``: a 12-block MLP-Mixer (16 tokens × 64 channels, token MLP 32, channel
  MLP 128, LayerNorm before each MLP), 150 leaves (0.23M params);
* ``resmlp``: 12 blocks of two pre-LayerNorm residual MLPs (width 128, hidden 64
  and 256), 150 leaves (1.2M params), batch 64 x 192 features;
* ``stack``: 75 residual blocks ``x + relu(Dense(LayerNorm(x)))`` of width 32,
  304 leaves (0.08M params).

    python benchmarks/train_step_models.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from timing import interleaved, median, spread

import fnn
import optimizers as opt
from fnn import train

BATCH = 64


def transpose() -> fnn.Layer:
    """Swaps the last two axes (tokens <-> channels), no params."""
    def init(key, shape, dtype=None):
        return (*shape[:-2], shape[-1], shape[-2]), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return jnp.swapaxes(x, -1, -2), state

    return fnn.layers.named(init, apply, "transpose")


def mlp_model():
    layer = fnn.serial(fnn.Dense(512), fnn.Relu(), fnn.Dense(512), fnn.Relu(), fnn.Dense(10))
    return layer, (BATCH, 784)


def resmlp_model(blocks: int = 12, width: int = 128):
    body = []
    for _ in range(blocks):
        for hidden in (64, 256):
            body.append(fnn.residual(fnn.LayerNorm(), fnn.Dense(hidden), fnn.Gelu(),
                                     fnn.Dense(width)))
    layer = fnn.serial(fnn.Dense(width), *body, fnn.LayerNorm(), fnn.Dense(10))
    return layer, (BATCH, 192)


def mixer_model(blocks: int = 12, tokens: int = 16, channels: int = 64):
    swap = transpose()
    body = []
    for _ in range(blocks):
        body.append(fnn.residual(fnn.LayerNorm(), swap, fnn.Dense(32), fnn.Gelu(),
                                 fnn.Dense(tokens), swap))
        body.append(fnn.residual(fnn.LayerNorm(), fnn.Dense(128), fnn.Gelu(),
                                 fnn.Dense(channels)))
    def pool_init(key, shape, dtype=None):
        return (shape[0], shape[2]), {}, {}

    def pool_apply(params, state, x, *, key=None, train=False):
        return jnp.mean(x, axis=1), state

    pool = fnn.layers.named(pool_init, pool_apply, "pool")
    layer = fnn.serial(fnn.Dense(channels), *body, fnn.LayerNorm(), pool, fnn.Dense(10))
    return layer, (BATCH, tokens, 48)


def stack_model(blocks: int = 75, width: int = 32):
    body = [fnn.residual(fnn.LayerNorm(), fnn.Dense(width), fnn.Relu()) for _ in range(blocks)]
    layer = fnn.serial(*body, fnn.Dense(10))
    return layer, (BATCH, width)


MODELS = {"mlp": mlp_model, "resmlp": resmlp_model, "mixer": mixer_model,
          "stack": stack_model}


def setup(name: str):
    """(params, model_state, loss_fn, batch) of one model."""
    layer, shape = MODELS[name]()
    _, params, model_state = layer.init(jax.random.key(0), shape)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, BATCH).astype(np.int32))

    def loss_fn(params, model_state, batch, key):
        xb, yb = batch
        z, model_state = layer.apply(params, model_state, xb, key=key, train=True)
        logp = jax.nn.log_softmax(z)
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1)), (model_state, {})

    return params, model_state, loss_fn, (x, y)


def fnn_runner(name: str, packed):
    params, model_state, loss_fn, batch = setup(name)
    tx = opt.adam(1e-3)
    state = train.init_train_state(params, model_state, tx, packed=packed)
    step = train.make_train_step(loss_fn, tx)
    key = jax.random.key(1)
    carry = [state]

    def run(n: int) -> None:
        s = carry[0]
        for _ in range(n):
            s, metrics = step(s, batch, key)
        jax.block_until_ready((s, metrics))
        carry[0] = s

    return run, type(state.params).__name__


def optax_runner(name: str):
    params, model_state, loss_fn, batch = setup(name)
    tx = optax.adam(1e-3)
    params = jax.tree_util.tree_map(jnp.array, params)
    key = jax.random.key(1)

    def step(params, model_state, opt_state, batch, key):
        (loss, (model_state, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, model_state, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), model_state, opt_state, loss

    jitted = jax.jit(step, donate_argnums=(0, 1, 2))
    carry = [params, model_state, tx.init(params)]

    def run(n: int) -> None:
        p, m, s = carry
        for _ in range(n):
            p, m, s, loss = jitted(p, m, s, batch, key)
        jax.block_until_ready((p, s, loss))
        carry[:] = [p, m, s]

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.2)
    parser.add_argument("--min-steps", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, optax {optax.__version__}, devices {jax.devices()}")
    print("| model | leaves | params | optax ms | fnn ms | fnn packed ms | fnn auto ms "
          "| auto packs | fnn/optax | packed/optax | packed/fnn | auto/optax | noise |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        params = setup(name)[0]
        leaves = jax.tree_util.tree_leaves(params)
        runners = {"optax": optax_runner(name)}
        runners["fnn"], _ = fnn_runner(name, False)
        runners["fnn packed"], _ = fnn_runner(name, True)
        runners["fnn auto"], kind = fnn_runner(name, None)
        samples = interleaved(runners, args.repeats, args.min_time, args.min_steps)

        def ratio(a, b, samples=samples):
            return statistics.median(x / y for x, y in zip(samples[a], samples[b]))

        ms = {c: 1e3 * median(xs) for c, xs in samples.items()}
        noise = max(spread(xs) for xs in samples.values())
        print(f"| {name} | {len(leaves)} | {sum(x.size for x in leaves)} | {ms['optax']:.3f} "
              f"| {ms['fnn']:.3f} | {ms['fnn packed']:.3f} | {ms['fnn auto']:.3f} "
              f"| {kind == 'Packed'} | {ratio('fnn', 'optax'):.2f} "
              f"| {ratio('fnn packed', 'optax'):.2f} | {ratio('fnn packed', 'fnn'):.2f} "
              f"| {ratio('fnn auto', 'optax'):.2f} | ±{50 * noise:.0f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
