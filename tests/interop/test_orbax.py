"""Checkpoints of params, model state and optimizer state: orbax-checkpoint and
flax.serialization, bit-exact, restored into the target's structure (NamedTuple types kept),
and a run resumed in a fresh process equal to an uninterrupted one.

(orbax is slow to import, so every orbax test is in this module; the 8-device sharded
checkpoint is tests/multidevice/test_checkpoint.py.)
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import optimizers as opt

ROOT = Path(__file__).resolve().parents[2]

# The problem, shared by this process and the fresh ones: an fnn.serial MLP with BatchNorm
# (running statistics in the model state) and Dropout (a key per step), and an optimizer
# state with every kind of node: a chain inside skip_nonfinite, masked wrappers (the frozen
# first layer's MaskedNode placeholders), AdamW's mask and a schedule (``scheduled``).
PROBLEM = '''
import jax, jax.numpy as jnp, numpy as np
import fnn, optimizers as opt
from fnn import train

STEPS, SPLIT = 12, 5


def is_weight(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def trainable(params):  # a prefix mask: the first layer is frozen (fine-tuning)
    return {name: name != "dense_0" for name in params}


def decaying(step):  # a learning-rate schedule (a plain function: the state's ``scheduled``)
    return 0.02 * 0.95 ** step


def build():
    model = fnn.serial(fnn.Dense(16), fnn.BatchNorm(), fnn.Relu(), fnn.Dropout(0.2), fnn.Dense(3))
    params, model_state = jax.jit(lambda key: model.init(key, (-1, 8), jnp.float32)[1:])(
        jax.random.key(0))
    tx = opt.skip_nonfinite(opt.chain(
        opt.clip_by_global_norm(1.0),
        opt.masked(opt.add_decayed_weights(1e-3), is_weight),
        opt.masked(opt.adamw(decaying, weight_decay=0.01,
                             mask=is_weight), trainable)))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(STEPS, 16, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=(STEPS, 16)).astype(np.int32)
    loss_fn, _ = train.classifier(model)
    step = train.make_train_step(loss_fn, tx, donate=False)  # states are compared after

    def run(state, stop):
        """Steps from state.step to ``stop``; step i sees batch i and its own dropout key
        (the state committed to the device, as a restored one is: the step compiles once)."""
        state = jax.device_put(state, jax.devices()[0])
        for i in range(int(state.step), stop):
            state, _ = step(state, (x[i], y[i]), jax.random.fold_in(jax.random.key(3), i))
        return state

    return params, model_state, tx, run
'''

# argv: mode ("first" or "resume"), checkpoint directory, output .npz
FRESH = PROBLEM + '''
import sys
import orbax.checkpoint as ocp
mode, directory, output = sys.argv[1:]
params, model_state, tx, run = build()
with ocp.StandardCheckpointer() as checkpointer:
    if mode == "first":     # train SPLIT steps, save, then go on uninterrupted
        state = run(train.init_train_state(params, model_state, tx), SPLIT)
        checkpointer.save(directory, state)
        checkpointer.wait_until_finished()  # before the next step donates the buffers
    else:                   # restore into the structure of a fresh state, train the rest
        target = jax.eval_shape(lambda: train.init_train_state(params, model_state, tx))
        state = checkpointer.restore(directory, target)
        assert type(state) is train.TrainState and int(state.step) == SPLIT
        assert jax.tree.structure(state) == jax.tree.structure(target)
state = run(state, STEPS)
np.savez(output, *[np.asarray(leaf) for leaf in jax.tree.leaves(state)])
'''


@functools.cache
def problem():
    """PROBLEM's names, built once (one compiled step for the tests of this process)."""
    namespace = {}
    exec(compile(PROBLEM, "PROBLEM", "exec"), namespace)
    namespace["built"] = namespace["build"]()
    return namespace


def assert_same_bits(a, b, name=""):
    assert a.dtype == b.dtype and a.shape == b.shape, name
    np.testing.assert_array_equal(a, b, err_msg=name)
    assert a.tobytes() == b.tobytes(), name  # also -0.0 vs 0.0 and NaN payloads


def assert_bit_exact(restored, original):
    """Same tree structure (NamedTuple types included), dtypes and bits."""
    assert jax.tree.structure(restored) == jax.tree.structure(original)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(original)):
        assert_same_bits(np.asarray(a), np.asarray(b))


def named_tuple_types(tree):
    """The NamedTuple classes at every node, in order (tree structures compare these too,
    this makes a failure readable)."""
    found = []

    def visit(node):
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            found.append(type(node))
        if isinstance(node, (tuple, list)):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)

    visit(tree)
    return found


def test_train_state_round_trips_bit_exactly_with_orbax(tmp_path):
    """Params, BatchNorm statistics and the nested optimizer state, after training steps,
    saved and restored into the structure of a fresh state (built with eval_shape, no
    arrays): every bit and every NamedTuple type comes back, and the next step agrees."""
    from fnn import train

    ns = problem()
    params, model_state, tx, run = ns["built"]
    state = run(train.init_train_state(params, model_state, tx), ns["SPLIT"])
    assert not np.allclose(np.asarray(state.model_state["batchnorm_0"]["mean"]), 0.0)
    np.testing.assert_array_equal(np.asarray(state.params["dense_0"]["w"]),
                                  np.asarray(params["dense_0"]["w"]))  # frozen
    assert not np.array_equal(np.asarray(state.params["dense_1"]["w"]),
                              np.asarray(params["dense_1"]["w"]))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
        checkpointer.wait_until_finished()
        target = jax.eval_shape(lambda: train.init_train_state(params, model_state, tx))
        restored = checkpointer.restore(tmp_path / "state", target)
    assert_bit_exact(restored, state)
    types = named_tuple_types(restored)
    assert types == named_tuple_types(state)
    assert {t.__name__ for t in types} >= {"TrainState", "SkipNonfiniteState", "TransformState",
                                           "MaskedState", "AdamState", "MaskedNode"}
    assert opt.hyperparams(restored.opt_state, link=2)["learning_rate"] == \
        opt.hyperparams(state.opt_state, link=2)["learning_rate"]
    # one more step from each
    assert_bit_exact(run(restored, ns["SPLIT"] + 1), run(state, ns["SPLIT"] + 1))


def test_masked_state_with_none_leaves_round_trips(tmp_path):
    """None leaves in the params (a slot with no array) stay None, MaskedNode placeholders
    stay MaskedNode, in a masked optimizer nested in another masked one."""
    params = {"w": np.arange(6.0).reshape(3, 2), "b": np.ones(2), "slot": None,
              "head": {"w": np.ones((2, 2)), "b": np.zeros(2)}}
    mask = {"w": True, "b": False, "slot": False, "head": True}
    inner = {"w": True, "b": False, "slot": False, "head": {"w": True, "b": False}}
    tx = opt.masked(opt.chain(opt.masked(opt.clip(0.5), inner), opt.momentum(0.1)), mask)
    update = jax.jit(tx.update)
    state = tx.init(params)
    grads = jax.tree.map(lambda p: np.full(p.shape, 2.0), params)
    for _ in range(3):
        _, state = update(grads, state, params)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "opt", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "opt", jax.eval_shape(lambda: tx.init(params)))
    assert_bit_exact(restored, state)
    velocity = restored.inner[1].velocity
    assert velocity["slot"] is None and type(velocity["b"]).__name__ == "MaskedNode"
    # v ← 0.9 v + g over three steps: clipped to 0.5 where the inner mask selects, else 2
    np.testing.assert_allclose(np.asarray(velocity["w"]), 0.5 * (1 + 0.9 + 0.81), rtol=1e-15)
    np.testing.assert_allclose(np.asarray(velocity["head"]["b"]), 2 * (1 + 0.9 + 0.81),
                               rtol=1e-15)
    assert_bit_exact(update(grads, restored, params), update(grads, state, params))


def test_without_a_target_orbax_gives_dicts_which_update_refuses(tmp_path):
    """The README's advice to restore into a target: without one the NamedTuples come back as
    plain dicts, and the optimizer says which state it expected."""
    params = {"w": np.ones(3)}
    tx = opt.skip_nonfinite(opt.adam(0.1))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "opt", tx.init(params))
        checkpointer.wait_until_finished()
        untyped = checkpointer.restore(tmp_path / "opt")
    assert type(untyped) is dict and type(untyped["inner"]) is dict
    with pytest.raises(TypeError, match="SkipNonfiniteState"):
        tx.update(params, untyped, params)


def test_flax_serialization_round_trip_of_a_train_state():
    """flax.serialization.to_bytes/from_bytes of fnn.train's TrainState (the optimizer
    states alone are tested in tests/optimizers): restored into init_train_state's
    structure, bit-exact, NamedTuple types kept."""
    from flax import serialization

    from fnn import train

    ns = problem()
    params, model_state, tx, run = ns["built"]
    state = run(train.init_train_state(params, model_state, tx), 3)
    blank = train.init_train_state(params, model_state, tx)
    restored = serialization.from_bytes(blank, serialization.to_bytes(state))
    assert_bit_exact(restored, state)
    assert named_tuple_types(restored) == named_tuple_types(state)


def test_flax_train_state_with_an_fnn_tx_round_trips(tmp_path):
    """A Flax TrainState whose tx is an fnn optimizer: orbax saves its arrays (params,
    opt_state, step); apply_fn and tx are static fields, supplied by the target."""
    from flax.training import train_state

    params = {"w": jnp.arange(6.0, dtype=jnp.float32).reshape(3, 2), "b": jnp.zeros(2)}
    tx = opt.chain(opt.clip_by_global_norm(1.0), opt.adam(0.1))
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
    state = state.replace(step=jnp.zeros((), jnp.int32))  # an array, as restored
    step = jax.jit(lambda state, g: state.apply_gradients(grads=g))
    g = jax.tree.map(jnp.ones_like, params)
    for _ in range(2):
        state = step(state, g)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "flax", state)
        checkpointer.wait_until_finished()
        target = jax.eval_shape(
            lambda: train_state.TrainState.create(apply_fn=None, params=params, tx=tx))
        restored = checkpointer.restore(tmp_path / "flax", target)
    assert restored.tx is tx and int(restored.step) == 2
    assert_bit_exact((restored.params, restored.opt_state), (state.params, state.opt_state))
    assert_bit_exact(step(restored, g).params, step(state, g).params)


def test_a_run_resumed_in_a_fresh_process_equals_an_uninterrupted_one(tmp_path):
    """Process 1 trains SPLIT steps, saves with orbax, and goes on to STEPS (the
    uninterrupted run); process 2 restores the checkpoint and trains the rest. Same bits."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)  # one device, as in this session
    outputs = {}
    for mode in ("first", "resume"):
        outputs[mode] = tmp_path / f"{mode}.npz"
        done = subprocess.run([sys.executable, "-c", FRESH, mode, str(tmp_path / "checkpoint"),
                               str(outputs[mode])], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, f"{mode}:\n{done.stderr[-3000:]}"
    uninterrupted, resumed = np.load(outputs["first"]), np.load(outputs["resume"])
    assert len(resumed.files) == len(uninterrupted.files) > 20
    for name in uninterrupted.files:
        assert_same_bits(resumed[name], uninterrupted[name], name)
    assert int(resumed[resumed.files[-1]]) == 12  # TrainState.step, the last leaf


def test_a_packed_train_state_checkpoints_resumes_and_serializes(tmp_path):
    """fnn.train packs a tree of >= 100 leaves by default (here forced on a small model, which
    compiles fast): the state must checkpoint with orbax (fnn.callbacks.Checkpoint), resume
    to the uninterrupted run, and round-trip through flax.serialization (Packed registers
    itself there)."""
    import flax.serialization

    import fnn
    from fnn import callbacks, train

    model = fnn.serial(fnn.Dense(8), fnn.BatchNorm(), fnn.Relu(), fnn.Dense(3))
    _, params, model_state = model.init(jax.random.key(0), (-1, 4), jnp.float32)
    loss_fn, _ = train.classifier(model)
    tx = opt.adam(1e-2)
    state = train.init_train_state(params, model_state, tx, packed=True)
    assert isinstance(state.params, opt.Packed)
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 3, 32).astype(np.int32))
    epoch = train.jit_epoch(loss_fn, tx, 8)  # compiled once for the three runs
    run = functools.partial(train.fit, loss_fn, tx, train_data=data, key=jax.random.key(1),
                            batch_size=8, progress=False, epoch_fn=epoch)
    saved, _ = run(state=state, epochs=2, callbacks=[callbacks.Checkpoint(tmp_path / "ckpt")])
    restored = callbacks.restore_checkpoint(tmp_path / "ckpt", state)
    assert isinstance(restored.params, opt.Packed)
    assert restored.params.layout == state.params.layout
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    resumed, _ = run(state=restored, epochs=1)
    straight, _ = run(state=state, epochs=3)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    back = flax.serialization.from_bytes(state, flax.serialization.to_bytes(saved))
    assert isinstance(back.params, opt.Packed) and back.params.layout == state.params.layout
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    grouped = opt.pack(params, group=lambda path, x: x.ndim >= 2)  # other buffers
    with pytest.raises(ValueError, match="are not the target's"):
        flax.serialization.from_bytes(grouped, flax.serialization.to_bytes(saved.params))
