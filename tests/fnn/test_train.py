"""fnn.train: the step builder with any loss function, scanned epochs, fit, data parallelism."""

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

import optimizers as opt
from fnn import train

ROOT = Path(__file__).resolve().parents[2]


def linear_problem(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    w = rng.normal(size=(5, 3))
    y = x @ w + 0.01 * rng.normal(size=(n, 3))
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}

    def loss_fn(params, model_state, batch, key):
        xb, yb = batch
        loss = jnp.mean((xb @ params["w"] + params["b"] - yb) ** 2)
        return loss, (model_state, {"mae": jnp.mean(jnp.abs(xb @ params["w"] - yb))})

    return (x, y), params, loss_fn


def test_readme_example_runs():
    """The README's hand-written-model example, executed as written."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- example: handwritten -->\s*```python\n(.*?)```", readme, re.S)
    assert match, "README lost its hand-written model example"
    namespace = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    assert namespace["history"]["val_accuracy"][-1] > 0.9


def test_step_trains_compiles_once_and_donates():
    data, params, loss_fn = linear_problem()
    traces = []

    def counting_loss(*args):
        traces.append(1)
        return loss_fn(*args)

    tx = opt.adam(0.05)
    state = train.init_train_state(params, {}, tx)
    step = train.make_train_step(counting_loss, tx)
    first_loss = None
    for i in range(200):
        old = state
        state, metrics = step(state, data, jax.random.key(i))
        first_loss = first_loss or float(metrics["loss"])
    assert len(traces) == 1
    assert old.params["w"].is_deleted(), "the previous state should have been donated"
    assert float(metrics["loss"]) < 0.01 * first_loss
    assert int(state.step) == 200 and set(metrics) == {"loss", "mae"}


def test_epoch_sees_every_example_once():
    n, batch = 53, 8
    x = np.arange(n)

    def loss_fn(params, model_state, batch_x, key):
        counts = model_state["counts"] + jnp.zeros(n).at[batch_x].add(1.0)
        return jnp.sum(params["w"] ** 2), ({"counts": counts}, {})

    tx = opt.sgd(0.1)
    state = train.init_train_state({"w": jnp.ones(2)}, {"counts": jnp.zeros(n)}, tx)
    epoch = jax.jit(train.make_epoch(loss_fn, tx, batch))
    state, _ = epoch(state, x, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(state.model_state["counts"]), np.ones(n))
    state, _ = jax.jit(train.make_epoch(loss_fn, tx, batch, drop_remainder=True))(
        state, x, jax.random.key(0))
    assert float(state.model_state["counts"].sum()) == n + (n // batch) * batch


def test_fit_is_deterministic_and_keeps_history():
    data, params, loss_fn = linear_problem()
    eval_fn = lambda p, s, batch: {"loss": loss_fn(p, s, batch, None)[0]}
    runs = []
    for _ in range(2):
        tx = opt.momentum(0.05)
        state = train.init_train_state(params, {}, tx)
        state, history = train.fit(loss_fn, tx, state, data, key=jax.random.key(7), epochs=5,
                                   batch_size=16, val_data=data, eval_fn=eval_fn, progress=False)
        runs.append((state, history))
    (a, ha), (b, hb) = runs
    assert ha["train_loss"] == hb["train_loss"]
    np.testing.assert_array_equal(np.asarray(a.params["w"]), np.asarray(b.params["w"]))
    assert len(ha["train_loss"]) == len(ha["val_loss"]) == len(ha["time"]) == 5
    assert ha["val_loss"][-1] < ha["val_loss"][0]


def test_fit_equals_the_same_steps_by_hand():
    data, params, loss_fn = linear_problem(n=40)
    tx = opt.adam(0.01)
    state, _ = train.fit(loss_fn, tx, train.init_train_state(params, {}, tx), data,
                         key=jax.random.key(1), epochs=2, batch_size=16, progress=False)
    manual = train.init_train_state(params, {}, tx)
    step = jax.jit(train.train_step_fn(loss_fn, tx))
    for e in range(2):
        shuffle_key, step_key = jax.random.split(jax.random.fold_in(jax.random.key(1), e))
        order = np.asarray(jax.random.permutation(shuffle_key, 40))
        for i, start in enumerate(range(0, 40, 16)):
            index = order[start:start + 16]
            manual, _ = step(manual, (data[0][index], data[1][index]),
                             jax.random.fold_in(step_key, i))
    np.testing.assert_allclose(np.asarray(state.params["w"]), np.asarray(manual.params["w"]),
                               rtol=1e-12)


def test_packed_train_state_gives_the_same_result():
    data, params, loss_fn = linear_problem()
    results = []
    for packed in (False, True):
        tx = opt.adamw(0.01, weight_decay=0.1)
        state = train.init_train_state(params, {}, tx, packed=packed)
        state, _ = train.fit(loss_fn, tx, state, data, key=jax.random.key(0), epochs=3,
                             batch_size=32, progress=False)
        results.append(state.unpacked_params())
    assert isinstance(state.params, opt.Packed)
    for a, b in zip(jax.tree_util.tree_leaves(results[0]), jax.tree_util.tree_leaves(results[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)


def test_progress_bar_is_drawn(capsys):
    data, params, loss_fn = linear_problem(n=32)
    tx = opt.sgd(0.01)
    train.fit(loss_fn, tx, train.init_train_state(params, {}, tx), data, key=jax.random.key(0),
              epochs=2, batch_size=16, progress=True, description="demo")
    assert "demo" in capsys.readouterr().err


def test_bad_loss_function_and_arguments():
    data, params, _ = linear_problem(n=32)
    tx = opt.sgd(0.01)
    state = train.init_train_state(params, {}, tx)
    bad = lambda p, s, b, k: jnp.sum(p["w"])
    with pytest.raises(TypeError, match=re.escape("must return (loss, (new_model_state, metrics))")):
        train.make_train_step(bad, tx)(state, data, jax.random.key(0))
    vector = lambda p, s, b, k: (p["w"].sum(0), (s, {}))
    with pytest.raises(TypeError, match="the loss must be a scalar"):
        train.make_train_step(vector, tx)(state, data, jax.random.key(0))
    good = lambda p, s, b, k: (jnp.sum(p["w"] ** 2), (s, {}))
    with pytest.raises(TypeError, match=r"use jax.random.key\(3\)"):
        train.fit(good, tx, state, data, key=3, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        train.make_epoch(good, tx, 0)
    with pytest.raises(TypeError, match="tx must be an optimizer"):
        train.make_train_step(good, opt.adam)


def test_data_parallel_on_a_device_mesh():
    """Two CPU devices: the sharded step gives the single-device result."""
    script = textwrap.dedent("""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh
        import optimizers as opt
        from fnn import train
        assert len(jax.devices()) == 2
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
        y = jnp.asarray(rng.normal(size=(64, 2)), jnp.float32)
        def loss_fn(p, s, batch, key):
            xb, yb = batch
            return jnp.mean((xb @ p["w"] - yb) ** 2), (s, {})
        tx = opt.adam(0.01)
        mesh = Mesh(np.array(jax.devices()), ("data",))
        results = []
        for m in (None, mesh):
            state = train.init_train_state({"w": jnp.zeros((4, 2))}, {}, tx)
            step = train.make_train_step(loss_fn, tx, mesh=m)
            for i in range(10):
                state, metrics = step(state, (x, y), jax.random.key(i))
            results.append(np.asarray(state.params["w"]))
        sharding = step.lower(state, (x, y), jax.random.key(0)).compile().input_shardings[0][1]
        assert "data" in str(sharding), sharding
        np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
        print("ok")
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
