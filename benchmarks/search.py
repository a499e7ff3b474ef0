"""Caviar vs panda: a vmapped fnn search against an Optuna search of the same Flax + optax model.

Three searches over the same 16 random (learning rate, weight decay) configurations
of the digits MLP (64-256-256-10, BatchNorm, Dropout 0.2, Adam with L2 weight decay
on the weight matrices, batch 64), each trial trained for ``--epochs`` epochs:

1. Optuna (RandomSampler) driving a Flax linen + optax objective written the
   way Optuna users write it: a new model, optimizer and jitted step per trial
   (so every trial retraces and recompiles), one step per batch.
2. fnn, sequential: the same configurations one after another, one compiled
   epoch program reused for all (hyperparameters are data).
3. fnn, vmapped: all configurations in one compiled program
   (``fnn.tuning.parallel_fit``).

It reports trials/s and the best validation accuracy of each, the speedups of
(3) over (1) and over (2), and the train step's steps/s for fnn and for Flax +
optax on the same model in the same process. Run::

    pip install -e ".[bench]" && python benchmarks/search.py --seeds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optimizers as opt
from fnn import cli, train, tuning

SPACE = {"learning_rate": tuning.log_uniform(1e-4, 1e-1),
         "weight_decay": tuning.log_uniform(1e-6, 1e-2)}


class FlaxMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        for _ in range(2):
            x = nn.Dense(256)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.relu(x)
            x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(10)(x)


def flax_trial(config, train_set, val_set, epochs, batch_size, seed):
    """One Optuna-style trial: build, jit and train a fresh Flax model."""
    x_train, y_train = train_set
    model = FlaxMLP()
    key = jax.random.key(seed)
    variables = model.init(key, x_train[:1], train=False)
    is_weight = jax.tree_util.tree_map(lambda p: p.ndim >= 2, variables["params"])
    tx = optax.chain(optax.masked(optax.add_decayed_weights(config["weight_decay"]), is_weight),
                     optax.adam(config["learning_rate"]))
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, batch_stats, opt_state, x, y, key):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                          train=True, rngs={"dropout": key},
                                          mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        u, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, u), updates["batch_stats"], opt_state, loss

    rng = np.random.default_rng(seed)
    n = 0
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for i in range(0, len(order), batch_size):
            index = order[i:i + batch_size]
            params, batch_stats, opt_state, _ = step(params, batch_stats, opt_state,
                                                     x_train[index], y_train[index],
                                                     jax.random.fold_in(key, n))
            n += 1
    logits = model.apply({"params": params, "batch_stats": batch_stats}, val_set[0], train=False)
    return float(jnp.mean(jnp.argmax(logits, -1) == val_set[1]))


def optuna_search(configs, train_set, val_set, epochs, batch_size, seed):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    for config in configs:  # the same configurations as fnn, enqueued
        study.enqueue_trial(config)

    def objective(trial):
        config = {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True),
                  "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)}
        return flax_trial(config, train_set, val_set, epochs, batch_size, seed)

    start = time.perf_counter()
    study.optimize(objective, n_trials=len(configs))
    return time.perf_counter() - start, study.best_value


def fnn_searches(configs, train_set, val_set, epochs, batch_size, seed):
    model = cli.mlp()
    loss_fn, eval_fn = train.classifier(model)
    params, model_state = cli.init_model(model, seed, 64)
    tx = cli.make_optimizer("adam", 1e-3, 1e-4)
    state = train.init_train_state(params, model_state, tx)

    start = time.perf_counter()
    vmapped = tuning.parallel_fit(loss_fn, tx, state, configs, train_set,
                                  key=jax.random.key(seed), epochs=epochs,
                                  batch_size=batch_size, val_data=val_set, eval_fn=eval_fn)
    vmapped_time = time.perf_counter() - start

    start = time.perf_counter()
    epoch = jax.jit(train.make_epoch(loss_fn, tx, batch_size), donate_argnums=(0,))
    evaluate = jax.jit(eval_fn)
    sequential = []
    for config in configs:
        s = train.init_train_state(params, model_state, tx)
        s = s._replace(opt_state=opt.set_hyperparams(s.opt_state, **config))
        for e in range(epochs):
            s, _ = epoch(s, train_set, jax.random.fold_in(jax.random.key(seed), e))
        sequential.append(float(evaluate(s.params, s.model_state, val_set)["accuracy"]))
    sequential_time = time.perf_counter() - start
    return (vmapped_time, max(r["val_accuracy"] for r in vmapped),
            sequential_time, max(sequential))


def step_rates(train_set, batch_size, seed, steps=300, repeats=5):
    """Steps/s of one jitted train step per batch: fnn layers + fnn Adam vs Flax + optax."""
    x, y = train_set
    xb, yb = x[:batch_size], y[:batch_size]
    model = cli.mlp()
    loss_fn, _ = train.classifier(model)
    params, model_state = cli.init_model(model, seed, 64)
    tx = opt.adam(1e-3)
    fnn_step = train.make_train_step(loss_fn, tx)
    fnn_state = [train.init_train_state(params, model_state, tx)]

    fmodel = FlaxMLP()
    variables = fmodel.init(jax.random.key(seed), xb[:1], train=False)
    otx = optax.adam(1e-3)
    flax_state = [(variables["params"], variables["batch_stats"], otx.init(variables["params"]))]

    @jax.jit
    def flax_step(p, bs, o, x, y, key):
        def loss_fn(p):
            logits, upd = fmodel.apply({"params": p, "batch_stats": bs}, x, train=True,
                                       rngs={"dropout": key}, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
        (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
        u, o = otx.update(g, o, p)
        return optax.apply_updates(p, u), upd["batch_stats"], o

    key = jax.random.key(0)

    def run_fnn():
        s = fnn_state[0]
        for _i in range(steps):
            s, m = fnn_step(s, (xb, yb), key)
        jax.block_until_ready(s)
        fnn_state[0] = s

    def run_flax():
        p, bs, o = flax_state[0]
        for _i in range(steps):
            p, bs, o = flax_step(p, bs, o, xb, yb, key)
        jax.block_until_ready(p)
        flax_state[0] = (p, bs, o)

    run_fnn()
    run_flax()
    fnn_times, flax_times = [], []
    for _ in range(repeats):  # interleaved, so machine noise hits both
        t = time.perf_counter()
        run_fnn()
        fnn_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_flax()
        flax_times.append(time.perf_counter() - t)
    return steps / statistics.median(fnn_times), steps / statistics.median(flax_times)


def matmul_floor(train_set, n_models, epochs, batch_size, hidden=256, classes=10, repeats=3):
    """Seconds the vmapped search spends in matrix products alone: the same forward and
    backward products of ``n_models`` models for every step, nothing else (no BatchNorm,
    dropout, loss or optimizer), compiled once and timed after compilation (median)."""
    x_all = jnp.asarray(train_set[0], jnp.float32)
    features, steps = x_all.shape[1], epochs * (len(x_all) // batch_size)
    key = jax.random.split(jax.random.key(0), 3)
    shapes = [(features, hidden), (hidden, hidden), (hidden, classes)]
    weights = tuple(jax.random.normal(k, (n_models, *s)) * 0.01 for k, s in zip(key, shapes))

    def model_step(ws, x):
        w1, w2, w3 = ws
        h1 = x @ w1
        h2 = h1 @ w2
        d3 = (h2 @ w3) * 1e-3                       # stands in for the loss gradient
        d2 = d3 @ w3.T
        d1 = d2 @ w2.T
        grads = (x.T @ d1, h1.T @ d2, h2.T @ d3)
        return tuple(w - 1e-6 * g for w, g in zip(ws, grads))

    @jax.jit
    def run(ws):
        def body(ws, i):
            x = jax.lax.dynamic_slice_in_dim(x_all, (i * batch_size) % (len(x_all) - batch_size),
                                             batch_size)
            return jax.vmap(model_step, in_axes=(0, None))(ws, x), None
        return jax.lax.scan(body, ws, jnp.arange(steps))[0]

    jax.block_until_ready(run(weights))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(weights))
        times.append(time.perf_counter() - start)
    # forward: 3 products; backward: 3 weight gradients and 2 input gradients (none for x)
    per_model = 2 * features * hidden + 3 * hidden * hidden + 3 * hidden * classes
    flops = 2 * n_models * steps * batch_size * per_model
    return statistics.median(times), flops


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data split, the configurations and the first run")
    parser.add_argument("--seeds", type=int, default=1,
                        help="training seeds (init, dropout, data order) to repeat each search "
                             "with; times are medians, best accuracies means over seeds")
    parser.add_argument("--skip-optuna", action="store_true", help="only the fnn searches")
    args = parser.parse_args(argv)

    train_set, val_set, _ = cli.load("digits", args.seed)
    configs = tuning.sample(SPACE, jax.random.key(args.seed), args.trials)
    n = len(configs)
    seeds = range(args.seed, args.seed + args.seeds)
    runs: dict[str, list[tuple[float, float]]] = {"vmapped": [], "sequential": [], "optuna": []}
    for seed in seeds:
        vm_t, vm_acc, seq_t, seq_acc = fnn_searches(configs, train_set, val_set, args.epochs,
                                                    args.batch_size, seed)
        runs["vmapped"].append((vm_t, vm_acc))
        runs["sequential"].append((seq_t, seq_acc))
        if not args.skip_optuna:
            runs["optuna"].append(optuna_search(
                configs, (np.asarray(train_set[0]), np.asarray(train_set[1])), val_set,
                args.epochs, args.batch_size, seed))

    def time_of(name):
        return statistics.median(t for t, _ in runs[name])

    print(f"{n} trials × {args.epochs} epochs of the digits MLP, seeds {list(seeds)}\n")
    print("| search | time (s) | trials/s | best val acc (mean) | best val acc per seed |\n"
          "|---|---:|---:|---:|---|")
    labels = {"vmapped": "fnn vmapped (parallel_fit)", "sequential": "fnn sequential (one compile)",
              "optuna": "Optuna + Flax + optax"}
    for name, label in labels.items():
        if runs[name]:
            accs = [a for _, a in runs[name]]
            print(f"| {label} | {time_of(name):.2f} | {n / time_of(name):.2f} | "
                  f"{statistics.mean(accs):.4f} | {', '.join(f'{a:.4f}' for a in accs)} |")
    vm_t, seq_t = time_of("vmapped"), time_of("sequential")
    if runs["optuna"]:
        op_t = time_of("optuna")
        print(f"\nvmapped speedup: {op_t / vm_t:.1f}× over Optuna, {seq_t / vm_t:.1f}× over the "
              "sequential fnn loop")
        floor, flops = matmul_floor(train_set, n, args.epochs, args.batch_size)
        print(f"matrix products alone (the same {n} models x {args.epochs} epochs, forward and "
              f"backward, nothing else): {floor:.2f} s ({flops / floor / 1e9:.0f} GFLOP/s); "
              f"a 10x speedup over Optuna would need the whole vmapped search in "
              f"{op_t / 10:.2f} s")
    else:
        print(f"\nvmapped speedup: {seq_t / vm_t:.1f}× over the sequential fnn loop")
    fnn_rate, flax_rate = step_rates(train_set, args.batch_size, args.seed)
    print(f"train step (batch {args.batch_size}, jitted, one call per step): fnn {fnn_rate:.0f} "
          f"steps/s, Flax + optax {flax_rate:.0f} steps/s, ratio {fnn_rate / flax_rate:.2f}")


if __name__ == "__main__":
    main()
