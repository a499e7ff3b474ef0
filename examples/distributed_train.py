"""Training on several processes (hosts) with FSDP: one script, started once per process.

Each process runs this same program. ``jax.distributed.initialize`` connects
them; afterwards ``jax.devices()`` lists the devices of every process and one
``Mesh`` spans them all. Params and Adam moments are split over all devices
(``sharding="fsdp"``), and every process feeds only its own rows of each global
batch (``jax.make_array_from_process_local_data``): no process ever holds the
whole batch or the whole optimizer state.

On one machine, two processes with 4 virtual CPU devices each (CPU collectives
over gloo, TCP)::

    python examples/distributed_train.py --coordinator 127.0.0.1:1234 \
        --num-processes 2 --process-id 0 --local-devices 4 &
    python examples/distributed_train.py --coordinator 127.0.0.1:1234 \
        --num-processes 2 --process-id 1 --local-devices 4

On a GPU or TPU cluster the same script runs unchanged, one process per host
(or per GPU): pass the coordinator (host:port of process 0, reachable by all)
and each process's id, or set ``FNN_COORDINATOR``, ``FNN_NUM_PROCESSES`` and
``FNN_PROCESS_ID``; or give none of them under SLURM, Open MPI or on Cloud TPU,
where ``jax.distributed.initialize()`` detects them itself. Leave out
``--local-devices`` there (it only makes virtual CPU devices).

``--reference`` trains the same model on the same global batches on a single
device, with no mesh, for comparison; ``--output`` writes the final params (all
processes gather them; process 0 writes).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

FEATURES, CLASSES, HIDDEN = 32, 10, 256
GLOBAL_BATCH = 64


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", default=env("FNN_COORDINATOR"),
                        help="host:port of process 0 (default: $FNN_COORDINATOR, else the "
                             "cluster's auto-detection)")
    parser.add_argument("--num-processes", type=int, default=env("FNN_NUM_PROCESSES"))
    parser.add_argument("--process-id", type=int, default=env("FNN_PROCESS_ID"))
    parser.add_argument("--local-devices", type=int, default=None,
                        help="virtual CPU devices per process (CPU only)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sharding", choices=["fsdp", "replicated"], default="fsdp")
    parser.add_argument("--reference", action="store_true",
                        help="train on one device without a mesh instead (the comparison)")
    parser.add_argument("--output", default=None, help="write the final params (.npz) here")
    parser.add_argument("--timeout", type=int, default=120,
                        help="seconds to wait for the other processes at start-up")
    return parser.parse_args(argv)


def dataset(n: int = 1024, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed classification problem (labels from a random linear teacher), float32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, FEATURES)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((FEATURES, CLASSES)), axis=1).astype(np.int32)
    return x, y


def global_batch(step: int, x: np.ndarray, y: np.ndarray) -> slice:
    """Rows of the data set that form global batch ``step``: the same in every process."""
    start = step * GLOBAL_BATCH % len(x)
    return slice(start, start + GLOBAL_BATCH)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import jax

    if args.local_devices:  # before JAX starts: this process's virtual CPU devices
        jax.config.update("jax_num_cpu_devices", args.local_devices)
    if not args.reference:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                   initialization_timeout=args.timeout)

    import jax.numpy as jnp
    from jax.experimental import multihost_utils

    import fnn
    import optimizers as opt

    # BatchNorm first: a Dense bias right before a BatchNorm has a true gradient of 0, which
    # Adam would turn into steps of ±η driven by rounding noise, different on every layout
    model = fnn.serial(fnn.BatchNorm(), fnn.Dense(HIDDEN), fnn.Relu(), fnn.Dropout(0.1),
                       fnn.Dense(HIDDEN), fnn.Relu(), fnn.Dense(CLASSES))
    # the same key in every process: the same initial params everywhere
    _, params, model_state = model.init(jax.random.key(0), (-1, FEATURES), jnp.float32)
    loss_fn, _ = fnn.train.classifier(model)
    tx = opt.adam(1e-3)
    x, y = dataset()

    if args.reference:
        state = fnn.train.init_train_state(params, model_state, tx)
        step = fnn.train.make_train_step(loss_fn, tx)
        feed = lambda rows: (x[rows], y[rows])  # noqa: E731 - the whole batch, one device
    else:
        mesh = jax.make_mesh((jax.device_count(),), ("data",))  # every process's devices
        state = fnn.train.init_train_state(params, model_state, tx, mesh=mesh,
                                           sharding=args.sharding)
        step = fnn.train.make_train_step(loss_fn, tx, mesh=mesh)
        batch_sharding = fnn.sharding.batch_sharding(mesh)
        # the rows of a global batch that land on this process's devices (a contiguous block)
        local = sorted({index[0].indices(GLOBAL_BATCH)[:2] for index in
                        batch_sharding.addressable_devices_indices_map(
                            (GLOBAL_BATCH, FEATURES)).values()})
        first, last = local[0][0], local[-1][1]

        def feed(rows: slice):
            # only this process's share is read (from disk, in a real job) and sent to its devices
            mine = slice(rows.start + first, rows.start + last)
            return tuple(jax.make_array_from_process_local_data(batch_sharding, part,
                                                                (GLOBAL_BATCH, *part.shape[1:]))
                         for part in (x[mine], y[mine]))

    losses = []
    for i in range(args.steps):
        state, metrics = step(state, feed(global_batch(i, x, y)), jax.random.key(100 + i))
        losses.append(float(metrics["loss"]))

    params = state.params if args.reference else multihost_utils.process_allgather(
        state.params, tiled=True)
    flat = {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    if args.output and jax.process_index() == 0:
        np.savez(args.output, losses=np.asarray(losses), **flat)
    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} "
          f"local / {jax.device_count()} devices, {args.steps} steps, loss {losses[0]:.4f} -> "
          f"{losses[-1]:.4f}", flush=True)
    if not args.reference:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
