"""Per-device memory of params + optimizer state: replicated vs FSDP, on 8 virtual devices.

Measured, not computed: every state is made with ``fnn.train.init_train_state(...,
mesh=mesh, sharding=...)`` and its bytes are summed per device from the arrays'
``addressable_shards`` (``fnn.sharding.bytes_per_device``); the table shows the
largest device's bytes. ``small`` is what FSDP keeps whole on every device
(leaves under ``fnn.sharding.MIN_SIZE`` elements, counts, hyperparameters); the
bound checked is fsdp ≤ replicated / devices + small. Then one training step is
run in each mode to show the placement survives it.

    python benchmarks/sharding_memory.py               # 8 devices, 784-2048-2048-10 MLP
    python benchmarks/sharding_memory.py --devices 4 --hidden 1024
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048)
    args = parser.parse_args(argv)

    import fnn  # noqa: I001 - the mesh must be made before JAX starts
    mesh = fnn.sharding.device_mesh(args.devices)  # CPU: makes the virtual devices
    import jax

    import optimizers as opt

    model = fnn.serial(fnn.Dense(args.hidden), fnn.BatchNorm(), fnn.Relu(),
                       fnn.Dense(args.hidden), fnn.BatchNorm(), fnn.Relu(), fnn.Dense(10))
    _, params, model_state = model.init(jax.random.key(0), (-1, 784))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    loss_fn, _ = fnn.train.classifier(model)
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((8 * args.devices, 784)).astype(np.float32),
             rng.integers(0, 10, 8 * args.devices).astype(np.int32))
    optimizers = {"sgd": opt.sgd(0.1), "momentum": opt.momentum(0.01),
                  "adagrad": opt.adagrad(0.01), "adam": opt.adam(1e-3)}
    print(f"MLP 784-{args.hidden}-{args.hidden}-10 with BatchNorm: {n_params:,} float32 params; "
          f"{args.devices} {jax.devices()[0].platform} devices; jax {jax.__version__}")
    print("bytes per device = max over devices of the params + optimizer state's shard bytes "
          "(addressable_shards)\n")
    header = (f"| {'optimizer':9} | {'packed':6} | {'replicated':>12} | {'fsdp':>12} | "
              f"{'small (repl.)':>13} | {'fsdp/repl.':>10} | {'bound ok':8} | "
              f"{'after a step':12} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    failures = 0
    for name, tx in optimizers.items():
        for packed in (False, True):
            measured, small, kept = {}, 0, True
            for placement in ("replicated", "fsdp"):
                state = fnn.train.init_train_state(params, model_state, tx, mesh=mesh,
                                                   sharding=placement, packed=packed)
                tree = (state.params, state.opt_state)
                measured[placement] = max(fnn.sharding.bytes_per_device(tree).values())
                if placement == "fsdp":
                    whole = [x for x in jax.tree_util.tree_leaves(tree)
                             if x.sharding.is_fully_replicated]
                    small = max(fnn.sharding.bytes_per_device(whole).values(), default=0)
                before = [x.sharding.spec for x in jax.tree_util.tree_leaves(tree)]
                step = fnn.train.make_train_step(loss_fn, tx, mesh=mesh)
                state, _ = step(state, batch, jax.random.key(0))
                kept &= before == [x.sharding.spec for x in jax.tree_util.tree_leaves(
                    (state.params, state.opt_state))]
                kept &= max(fnn.sharding.bytes_per_device(
                    (state.params, state.opt_state)).values()) == measured[placement]
            ok = measured["fsdp"] <= measured["replicated"] / args.devices + small
            failures += not (ok and kept)
            print(f"| {name:9} | {str(packed):6} | {measured['replicated']:12,} | "
                  f"{measured['fsdp']:12,} | {small:13,} | "
                  f"{measured['fsdp'] / measured['replicated']:10.4f} | {str(ok):8} | "
                  f"{'same' if kept else 'CHANGED':12} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
