"""Sharded training on 8 devices (fnn.sharding, fnn.train with a mesh) against one device.

The reference everywhere is the same training run on a single device. Models
hold BatchNorm (statistics of the whole batch, replicated) and Dropout (masks
drawn from the step's key for the whole batch: the same bits however the batch
is split), so a sharded run must reproduce both.
"""

import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import fnn
import optimizers as opt
from fnn import sharding, train
from optimizers import _fused

ROOT = Path(__file__).resolve().parents[2]
DEVICES = 8


def mesh8():
    return jax.make_mesh((DEVICES,), ("data",))  # Explicit axes, jax.make_mesh's default


def bn_dropout_model():
    # w of the first Dense: (16, 128) → split along its 128 columns; of the second: (128, 10)
    # → along its 128 rows; biases and BatchNorm's scale and offset: small, replicated
    return fnn.serial(fnn.Dense(128), fnn.BatchNorm(), fnn.Relu(), fnn.Dropout(0.3),
                      fnn.Dense(10))


def classification_data(n=64, features=16, classes=10, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, features)).astype(dtype),
            rng.integers(0, classes, n).astype(np.int32))


def max_diff(a, b):
    return max(float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def specs(tree):
    return jax.tree_util.tree_map(lambda x: x.sharding.spec, tree)


def assert_moments_like_params(state):
    """Every leaf of the optimizer state that mirrors a param has that param's sharding;
    every other leaf (counts, hyperparameters) is replicated."""
    params = {tuple(p): x for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
    moments = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state):
        # an AdamState's mu['batchnorm_0']['scale'] sits at (…, .mu, ['batchnorm_0'], ['scale'])
        owner = next((params[tuple(path[i:])] for i in range(len(path))
                      if tuple(path[i:]) in params), None)
        if owner is not None and owner.shape == leaf.shape:
            moments += 1
            assert leaf.sharding.is_equivalent_to(owner.sharding, leaf.ndim), (
                jax.tree_util.keystr(path), leaf.sharding, owner.sharding)
        else:
            assert leaf.sharding.is_fully_replicated, (jax.tree_util.keystr(path), leaf.sharding)
    assert moments >= len(params), "no moments found: the check would be vacuous"


# ------------------------------------------------------------------ equality with one device


@pytest.mark.parametrize("name, tx, placement", [
    ("adam", opt.adam(3e-3), "fsdp"),
    ("momentum", opt.momentum(0.05), "fsdp"),
    ("adagrad", opt.adagrad(0.05), "fsdp"),
    ("adam", opt.adam(3e-3), "replicated"),
])
def test_sharded_training_equals_one_device(name, tx, placement):
    """20 steps with BatchNorm and Dropout in float64: params, BatchNorm statistics and losses
    equal the single-device run; the state keeps its placement after every step; one trace."""
    mesh = mesh8()
    model = bn_dropout_model()
    _, params, model_state = model.init(jax.random.key(0), (-1, 16), jnp.float64)
    loss_fn, _ = train.classifier(model)
    traces = []

    def counting_loss(*args):
        traces.append(1)
        return loss_fn(*args)

    reference = train.init_train_state(params, model_state, tx)
    state = train.init_train_state(params, model_state, tx, mesh=mesh, sharding=placement)
    one_device = train.make_train_step(loss_fn, tx)
    step = train.make_train_step(counting_loss, tx, mesh=mesh)
    expected = {"fsdp": {"w": (P(None, "data"), P("data")), "b": (P(), P())},
                "replicated": {"w": (P(), P()), "b": (P(), P())}}[placement]
    first = specs(state.params)
    assert (first["dense_0"]["w"], first["dense_1"]["w"]) == expected["w"]
    assert (first["dense_0"]["b"], first["dense_1"]["b"]) == expected["b"]
    x, y = classification_data()
    for i in range(20):
        key = jax.random.key(i)
        batch = (x[i % 2 * 32:][:32], y[i % 2 * 32:][:32])
        reference, reference_metrics = one_device(reference, batch, key)
        state, metrics = step(state, batch, key)
        assert specs(state.params) == first, f"step {i}: params moved"
        assert_moments_like_params(state)
        assert all(leaf.sharding.is_fully_replicated
                   for leaf in jax.tree_util.tree_leaves((state.model_state, state.step)))
        assert abs(float(metrics["loss"]) - float(reference_metrics["loss"])) < 1e-12
    assert len(traces) == 1 and len(step.programs) == 1, "the sharded step compiled again"
    # 1e-9: the bias in front of BatchNorm has a true gradient of 0, so its float64 rounding
    # noise (1e-17) is what Adam and AdaGrad normalize (to ~1e-11), and the running mean
    # follows that bias; every other leaf agrees to ~1e-15
    assert max_diff(state.params, reference.params) < 1e-9
    assert max_diff(state.model_state, reference.model_state) < 1e-9
    assert int(state.step) == 20
    changed = max_diff(state.model_state, model_state)
    assert changed > 1e-3, "BatchNorm statistics never moved: the comparison would be vacuous"


def test_dropout_masks_do_not_depend_on_the_split():
    """The masks a step draws for the whole batch are the same on 1 and 8 devices (the
    train-mode outputs are equal, and differ from another key's)."""
    mesh = sharding.auto_mesh("test", mesh8(), "data")
    layer = fnn.Dropout(0.5)
    x = jnp.ones((64, 32))
    apply = jax.jit(lambda x, key: layer.apply({}, {}, x, key=key, train=True)[0])
    on_one = apply(x, jax.random.key(3))
    split = jax.device_put(x, NamedSharding(mesh, P("data")))
    on_eight = apply(split, jax.random.key(3))
    assert len(on_eight.sharding.device_set) == DEVICES
    np.testing.assert_array_equal(np.asarray(on_one), np.asarray(on_eight))
    assert not np.array_equal(np.asarray(on_one), np.asarray(apply(x, jax.random.key(4))))


# ------------------------------------------------------------------ the one-pass kernels


def big_float32_model():
    # Dense weights of 256×512 and 512×256 (131072 elements ≥ _fused.CHUNK): stepped by
    # the C++ kernels; BatchNorm on the inputs so that no param has a zero true gradient
    return fnn.serial(fnn.BatchNorm(), fnn.Dense(512), fnn.Relu(), fnn.Dropout(0.2),
                      fnn.Dense(256), fnn.Relu(), fnn.Dense(10))


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def custom_calls(hlo):
    """(target, operand shapes) of every one-pass kernel call in compiled HLO text."""
    calls = []
    for line in hlo.splitlines():
        match = re.search(r'custom-call\((.*?)\), custom_call_target="(fnn_\w+)"', line)
        if match:
            shapes = re.search(r"= \((.*?)\) custom-call", line)
            calls.append((match.group(2), shapes.group(1) if shapes else ""))
    return calls


def assert_kernels_step_local_shards(hlo, params, moments):
    """The compiled program steps every float32 param (and its moments) with multi-tensor
    kernel calls whose operands are the local shards, flattened: the results' sizes are
    exactly the params' shard sizes, each 1 + moments times (no whole array anywhere)."""
    calls = custom_calls(hlo)
    assert calls and all(t.endswith("_multi_f32") for t, _ in calls), calls
    sizes = sorted(int(n) for _, s in calls for n in re.findall(r"f32\[(\d+)\]", s))
    local = [math.prod(x.sharding.shard_shape(x.shape)) for x in jax.tree_util.tree_leaves(params)]
    assert sizes == sorted(local * (1 + moments)), (sizes, local)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("name, tx", [("adam", opt.adam(1e-3)), ("momentum", opt.momentum(0.01)),
                                      ("adagrad", opt.adagrad(0.01))])
def test_kernels_step_each_shard_without_gathering(name, tx, packed):
    """Under FSDP the optimizer update is one kernel call per shard and no communication:
    its compiled program holds the kernels, on shard-sized operands, and no collective."""
    assert _fused.available(), "the one-pass kernels did not build; this test needs them"
    mesh = mesh8()
    _, params, model_state = big_float32_model().init(jax.random.key(0), (-1, 256))
    state = train.init_train_state(params, model_state, tx, mesh=mesh, sharding="fsdp",
                                   packed=packed)
    placement = sharding.state_shardings(state, sharding.auto_mesh("test", mesh, "data"), "fsdp")

    def update(grads, opt_state, params):
        return opt.step(tx, grads, opt_state, params)

    program = jax.jit(update, in_shardings=(placement.params, placement.opt_state,
                                            placement.params),
                      out_shardings=(placement.params, placement.opt_state),
                      donate_argnums=(1, 2))
    hlo = program.lower(state.params, state.opt_state, state.params).compile().as_text()
    assert_kernels_step_local_shards(hlo, state.params, moments=2 if name == "adam" else 1)
    found = [c for c in COLLECTIVES if f" {c}(" in hlo or f" {c}-start(" in hlo]
    assert not found, f"the sharded optimizer update communicates: {found}"


def test_float32_fsdp_with_kernels_equals_one_device():
    """Adam in float32 with the kernels on shards: 20 steps equal one device's to float32
    rounding, and the full step's kernels run on shards."""
    assert _fused.available()
    mesh = mesh8()
    tx = opt.adam(1e-3)
    model = big_float32_model()
    _, params, model_state = model.init(jax.random.key(1), (-1, 256))
    loss_fn, _ = train.classifier(model)
    reference = train.init_train_state(params, model_state, tx)
    state = train.init_train_state(params, model_state, tx, mesh=mesh, sharding="fsdp")
    one_device, step = train.make_train_step(loss_fn, tx), train.make_train_step(
        loss_fn, tx, mesh=mesh)
    x, y = classification_data(64, 256, dtype=np.float32)
    hlo = step.lower(state, (x, y), jax.random.key(0)).compile().as_text()
    assert_kernels_step_local_shards(hlo, state.params, moments=2)
    for i in range(20):
        reference, _ = one_device(reference, (x, y), jax.random.key(i))
        state, _ = step(state, (x, y), jax.random.key(i))
        assert_moments_like_params(state)
    scale = max(float(jnp.max(jnp.abs(p))) for p in jax.tree_util.tree_leaves(reference.params))
    diffs = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() for a, b in zip(
        jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(reference.params))])
    # float32 rounding (other summation orders on shards) for all but a few elements ...
    assert np.quantile(diffs, 0.999) < 1e-6 * scale, np.quantile(diffs, 0.999)
    # ... where a gradient that cancels to about eps = 1e-8 in an early step lets Adam's
    # g / (|g| + eps) turn its rounding into a few percent of one step η = 1e-3
    assert diffs.max() < 1e-4 * scale, diffs.max()
    assert max_diff(state.params, params) > 1e-3, "training did not move the params"


# ------------------------------------------------------------------ placement


def test_optimizer_state_follows_params_through_wrappers():
    """Moments are found by tree structure inside chains, masks, accumulation, NaN skipping
    and switches; counts and hyperparameters stay replicated."""
    mesh = mesh8()
    params = {"dense": {"w": jnp.zeros((64, 32)), "b": jnp.zeros(32)},
              "out": {"w": jnp.zeros((32, 64))}}
    is_weight = lambda p: jax.tree_util.tree_map(lambda x: x.ndim == 2, p)  # noqa: E731
    tx = opt.switch(
        opt.chain(opt.clip_by_global_norm(1.0), opt.masked(opt.adamw(1e-3), is_weight)),
        opt.accumulate(opt.skip_nonfinite(opt.momentum(0.1)), every=2),
        opt.rmsprop(1e-3, centered=True, momentum=0.9))
    state = train.init_train_state(params, {}, tx, mesh=mesh, sharding="fsdp")
    assert specs(state.params) == {"dense": {"w": P("data"), "b": P()},
                                   "out": {"w": P(None, "data")}}
    assert_moments_like_params(state)
    masked_mu = state.opt_state.states[0][1].inner.mu
    assert masked_mu["dense"]["w"].sharding.spec == P("data")
    assert masked_mu["out"]["w"].sharding.spec == P(None, "data")
    grad_sum = state.opt_state.states[1].grad_sum
    assert grad_sum["out"]["w"].sharding.spec == P(None, "data")
    assert state.opt_state.states[2].count.sharding.is_fully_replicated
    # and it stays so through steps of each branch
    loss_fn = lambda p, s, batch, key: (  # noqa: E731
        jnp.mean((jnp.tanh(batch @ p["dense"]["w"] + p["dense"]["b"]) @ p["out"]["w"]) ** 2),
        (s, {}))
    step = train.make_train_step(loss_fn, tx, mesh=mesh)
    x = np.random.default_rng(0).standard_normal((16, 64))
    for index in range(3):
        state = state._replace(opt_state=state.opt_state._replace(index=jnp.int32(index)))
        state, _ = step(state, x, jax.random.key(index))
        assert_moments_like_params(state)
    assert len(step.programs) == 1


def test_memory_per_device_fsdp_is_an_eighth():
    """Bytes of params + Adam state on each device, from the arrays' shards: FSDP holds at
    most 1/8 of the replicated bytes plus its replicated small leaves."""
    mesh = mesh8()
    model = fnn.serial(fnn.Dense(512), fnn.BatchNorm(), fnn.Relu(), fnn.Dense(256), fnn.Relu(),
                       fnn.Dense(10))
    _, params, model_state = model.init(jax.random.key(0), (-1, 128))
    tx = opt.adam(1e-3)
    per_device = {}
    for placement in ("replicated", "fsdp"):
        state = train.init_train_state(params, model_state, tx, mesh=mesh, sharding=placement)
        measured = sharding.bytes_per_device((state.params, state.opt_state))
        assert len(measured) == DEVICES
        per_device[placement] = max(measured.values())
        if placement == "fsdp":
            small = max(sharding.bytes_per_device([
                x for x in jax.tree_util.tree_leaves((state.params, state.opt_state))
                if x.sharding.is_fully_replicated]).values())
    total = sum(x.nbytes for x in jax.tree_util.tree_leaves((params, tx.init(params))))
    assert per_device["replicated"] == total
    assert per_device["fsdp"] <= per_device["replicated"] / DEVICES + small
    assert small < per_device["replicated"] / 100  # biases, norms, counts, hyperparameters


def test_hand_sharded_params_and_rules():
    """Params placed by hand (the issue's case), a rule function and a pytree of specs: the
    step takes the params' placement and puts every moment beside its param."""
    mesh = mesh8()
    tx = opt.adam(1e-2)
    params = {"w": jnp.ones((16, 64)) / 16, "v": jnp.ones((64, 8)) / 64}
    loss_fn = lambda p, s, batch, key: (  # noqa: E731
        jnp.mean((jnp.tanh(batch @ p["w"]) @ p["v"]) ** 2), (s, {}))
    x = np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)
    reference = train.init_train_state(params, {}, tx)
    one_device = train.make_train_step(loss_fn, tx)
    for i in range(5):
        reference, _ = one_device(reference, x, jax.random.key(i))

    by_hand = train.init_train_state(params, {}, tx)  # made without a mesh, then placed by hand
    by_hand = by_hand._replace(params={
        "w": jax.device_put(by_hand.params["w"], NamedSharding(mesh, P(None, "data"))),
        "v": jax.device_put(by_hand.params["v"], NamedSharding(mesh, P("data")))})
    rule = lambda path, shape: P(None, "data") if shape[1] % 8 == 0 else P()  # noqa: E731
    tree = {"w": P("data"), "v": P()}
    cases = {"by hand": (by_hand, {"w": P(None, "data"), "v": P("data")}),
             "rule": (train.init_train_state(params, {}, tx, mesh=mesh, sharding=rule),
                      {"w": P(None, "data"), "v": P(None, "data")}),
             "tree": (train.init_train_state(params, {}, tx, mesh=mesh, sharding=tree),
                      {"w": P("data"), "v": P()})}
    for name, (state, expected) in cases.items():
        step = train.make_train_step(loss_fn, tx, mesh=mesh)
        with jax.set_mesh(mesh):  # a user's explicit-mesh context does not disturb the step
            for i in range(5):
                state, _ = step(state, x, jax.random.key(i))
        assert specs(state.params) == expected, name
        assert state.opt_state.mu["w"].sharding.spec == expected["w"], name
        assert state.opt_state.nu["v"].sharding.spec == expected["v"], name
        assert max_diff(state.params, reference.params) < 1e-5, name


def test_placement_errors_name_the_leaf_and_the_fix():
    mesh = mesh8()
    params = {"w": jnp.zeros((12, 10))}
    with pytest.raises(ValueError, match=r"params\['w'\].*10 is not a multiple of 8"):
        train.init_train_state(params, {}, opt.sgd(0.1), mesh=mesh, sharding={"w": P(None, "data")})
    with pytest.raises(ValueError, match=r"names mesh axis 'model'.*axes are \('data',\)"):
        train.init_train_state(params, {}, opt.sgd(0.1), mesh=mesh,
                               sharding=lambda path, shape: P("model"))
    with pytest.raises(TypeError, match=r"returned None for params\['w'\]"):
        train.init_train_state(params, {}, opt.sgd(0.1), mesh=mesh, sharding=lambda p, s: None)
    packed = train.init_train_state({"w": jnp.zeros(2001)}, {}, opt.sgd(0.1))
    packed = packed._replace(params=opt.pack({"w": jnp.zeros(2001)}))
    with pytest.raises(ValueError, match=r"state_shardings: packed buffer 'float64' holds 2001 "
                                         r"elements.*multiple_of=8"):
        sharding.state_shardings(packed, mesh, "fsdp")
    # no divisible dimension: the FSDP rule replicates (documented), no error
    state = train.init_train_state(params, {}, opt.sgd(0.1), mesh=mesh, sharding="fsdp")
    assert state.params["w"].sharding.is_fully_replicated
    with pytest.raises(ValueError, match="batch of 12 examples cannot be split evenly"):
        train.make_train_step(lambda p, s, b, k: (jnp.sum(p["w"]), (s, {})), opt.sgd(0.1),
                              mesh=mesh)(state, np.zeros((12, 3)), jax.random.key(0))


def test_device_mesh_after_jax_started():
    mesh = sharding.device_mesh(4)
    assert mesh.devices.size == 4 and mesh.axis_names == ("data",)
    with pytest.raises(ValueError, match="JAX had already started with 8"):
        sharding.device_mesh(16)


# ------------------------------------------------------------------ packed params


def test_packed_params_split_over_the_axis():
    """A packed buffer (padded to a multiple of 8) split over the devices trains as the
    unpacked tree does on one device."""
    mesh = mesh8()
    model = bn_dropout_model()
    _, params, model_state = model.init(jax.random.key(0), (-1, 16), jnp.float64)
    loss_fn, _ = train.classifier(model)
    tx = opt.adam(3e-3)
    reference = train.init_train_state(params, model_state, tx)
    state = train.init_train_state(params, model_state, tx, packed=True, mesh=mesh,
                                   sharding="fsdp")
    (buffer,) = state.params.buffers.values()
    n = sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert n % DEVICES and buffer.shape == (n + (-n) % DEVICES,)
    assert buffer.sharding.spec == P("data")
    one_device, step = train.make_train_step(loss_fn, tx), train.make_train_step(
        loss_fn, tx, mesh=mesh)
    x, y = classification_data()
    for i in range(20):
        reference, _ = one_device(reference, (x, y), jax.random.key(i))
        state, _ = step(state, (x, y), jax.random.key(i))
        assert_moments_like_params(state)
    assert max_diff(state.unpacked_params(), reference.params) < 1e-9
    (trained,) = state.params.buffers.values()
    assert float(jnp.max(jnp.abs(trained[n:]))) == 0.0, "the padding moved"


# ------------------------------------------------------------------ fit, parallel_fit, CLI


def test_fit_with_a_mesh_equals_fit_without():
    """fit with mesh= (FSDP, batches of 24 that 8 devices do not divide, a last smaller
    batch) equals fit on one device: params, BatchNorm statistics, history."""
    model = bn_dropout_model()
    _, params, model_state = model.init(jax.random.key(0), (-1, 16), jnp.float64)
    loss_fn, eval_fn = train.classifier(model)
    tx = opt.adam(1e-2)
    state = train.init_train_state(params, model_state, tx)
    x, y = classification_data(100)
    kwargs = dict(key=jax.random.key(1), epochs=3, batch_size=24, progress=False,
                  val_data=(x[:40], y[:40]), eval_fn=eval_fn)
    alone, history = train.fit(loss_fn, tx, state, (x, y), **kwargs)
    spread, spread_history = train.fit(loss_fn, tx, state, (x, y), mesh=mesh8(),
                                       sharding="fsdp", **kwargs)
    assert max_diff(alone.params, spread.params) < 1e-9
    assert max_diff(alone.model_state, spread.model_state) < 1e-9
    for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(history[k], spread_history[k], rtol=1e-10, err_msg=k)
    assert spread.params["dense_0"]["w"].sharding.spec == P(None, "data")
    assert_moments_like_params(spread)
    assert not state.params["dense_0"]["w"].is_deleted(), "fit consumed the caller's state"


def test_parallel_fit_with_a_mesh_equals_without():
    """Five configurations (padded to 8) spread over the devices give the results of the
    vmapped run on one device."""
    model = bn_dropout_model()
    _, params, model_state = model.init(jax.random.key(0), (-1, 16), jnp.float64)
    loss_fn, eval_fn = train.classifier(model)
    tx = opt.adam(1e-3)
    state = train.init_train_state(params, model_state, tx)
    x, y = classification_data(96)
    configs = [{"learning_rate": lr} for lr in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)]
    kwargs = dict(key=jax.random.key(2), epochs=2, batch_size=32, val_data=(x, y),
                  eval_fn=eval_fn)
    alone = fnn.tuning.parallel_fit(loss_fn, tx, state, configs, (x, y), **kwargs)
    spread, states = fnn.tuning.parallel_fit(loss_fn, tx, state, configs, (x, y), mesh=mesh8(),
                                             return_states=True, **kwargs)
    assert len(spread) == len(configs)
    # one trained state per configuration, the padding to 8 dropped; each one's own run
    assert all(leaf.shape[0] == len(configs) for leaf in jax.tree.leaves(states))
    last = jax.tree.map(lambda v: v[-1], states)
    alone_last, _ = train.fit(loss_fn, tx, state._replace(opt_state=opt.set_hyperparams(
        state.opt_state, learning_rate=configs[-1]["learning_rate"])), (x, y), key=kwargs["key"],
        epochs=2, batch_size=32, progress=False)
    for a, b in zip(jax.tree.leaves(last.params), jax.tree.leaves(alone_last.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-7, atol=1e-8)
    for a, b in zip(alone, spread):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) < 1e-9, (k, a[k], b[k])
    assert len({round(r["train_loss"], 6) for r in spread}) == len(configs)


def test_cli_devices_and_fsdp_equal_one_device():
    """python -m fnn train --devices 4 --sharding fsdp reports the one-device run's losses."""
    script = textwrap.dedent("""
        import io, sys
        from fnn import cli
        args = ["train", "--optimizer", "sgd", "--epochs", "2", "--hidden", "32", "--no-plot",
                "--no-progress"]
        rows = []
        for extra in (["--devices", "4", "--sharding", "fsdp"], []):
            out = io.StringIO()
            parsed = cli.build_parser().parse_args(args + extra)
            rows.append(cli.run_training(parsed, out=out)[0])
            print(out.getvalue())
        import jax
        assert jax.device_count() == 4, jax.device_count()
        assert abs(rows[0]["train_loss"] - rows[1]["train_loss"]) < 1e-5, rows
        assert abs(rows[0]["val_accuracy"] - rows[1]["val_accuracy"]) < 1e-9, rows
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"},
                         cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "4 devices (fsdp)" in out.stdout and out.stdout.strip().endswith("ok")
