"""fnn.train: the step builder with any loss function, scanned epochs, fit, data parallelism."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

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
    with pytest.raises(TypeError, match=r"key must be a JAX PRNG key, e.g. jax.random.key\(3\), not the seed 3"):
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
        try:  # 63 examples cannot be split over 2 devices: a clear error, not XLA's
            step(state, (x[:63], y[:63]), jax.random.key(0))
        except ValueError as error:
            assert "batch of 63 examples cannot be split evenly" in str(error), error
        else:
            raise AssertionError("an indivisible batch was accepted")
        print("ok")
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


# ------------------------------------------------------------------ issue 11 regressions


def bn_classifier(n=33, features=5, classes=3, seed=0):
    """A BatchNorm + Dropout classifier and a data set (float32, integer labels)."""
    import fnn

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int32)
    # BatchNorm first: a bias just before it would have a zero gradient up to rounding, which
    # Adam's normalization turns into a ±learning-rate step that depends on the rounding
    model = fnn.serial(fnn.BatchNorm(), fnn.Dense(8), fnn.Relu(), fnn.Dropout(0.2),
                       fnn.Dense(classes))
    _, params, model_state = model.init(jax.random.key(seed), (-1, features))
    loss_fn, eval_fn = train.classifier(model)
    return (x, y), params, model_state, loss_fn, eval_fn


@pytest.fixture(scope="module")
def bn_problem():
    """33 examples in batches of 16 (33 mod 16 = 1), Adam, and one compiled epoch for all fits."""
    (x, y), params, model_state, loss_fn, eval_fn = bn_classifier(n=33)
    tx = opt.adam(0.01)
    epoch = jax.jit(train.make_epoch(loss_fn, tx, 16), donate_argnums=(0,))
    return SimpleNamespace(data=(x, y), params=params, model_state=model_state, loss_fn=loss_fn,
                           eval_fn=eval_fn, tx=tx, epoch=epoch,
                           state=lambda: train.init_train_state(params, model_state, tx))


def fit_bn(problem, state, epochs):
    return train.fit(problem.loss_fn, problem.tx, state, problem.data, key=jax.random.key(3),
                     epochs=epochs, batch_size=16, progress=False, epoch_fn=problem.epoch)


def test_a_last_batch_of_one_joins_the_batch_before(bn_problem):
    """n mod batch_size = 1 with BatchNorm trains (the last example joins the last full batch)."""
    p = bn_problem
    x, y = p.data
    state, history = fit_bn(p, p.state(), 1)
    assert int(state.step) == 2 and np.isfinite(history["train_loss"]).all()
    # reference: the same steps by hand, batches of 16 and 17 of the epoch's permutation
    manual = p.state()
    step = jax.jit(train.train_step_fn(p.loss_fn, p.tx))
    shuffle_key, step_key = jax.random.split(jax.random.fold_in(jax.random.key(3), 0))
    order = np.asarray(jax.random.permutation(shuffle_key, 33))
    for i, index in enumerate([order[:16], order[16:]]):
        manual, _ = step(manual, (x[index], y[index]), jax.random.fold_in(step_key, i))
    for a, b in zip(jax.tree_util.tree_leaves(state.params),
                    jax.tree_util.tree_leaves(manual.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 17, 25, 26])
def test_every_epoch_layout_sees_every_example_once(n):
    batch = 8

    def loss_fn(params, model_state, batch_x, key):
        counts = model_state["counts"] + jnp.zeros(n).at[batch_x].add(1.0)
        smallest = jnp.minimum(model_state["smallest"], batch_x.shape[0])
        return jnp.sum(params["w"] ** 2), ({"counts": counts, "smallest": smallest}, {})

    tx = opt.sgd(0.1)
    state = train.init_train_state({"w": jnp.ones(2)},
                                   {"counts": jnp.zeros(n), "smallest": jnp.asarray(10**6)}, tx)
    state, _ = jax.jit(train.make_epoch(loss_fn, tx, batch))(state, np.arange(n),
                                                             jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(state.model_state["counts"]), np.ones(n))
    assert int(state.model_state["smallest"]) >= min(n, 2)  # no batch of one unless n = 1
    assert int(state.step) == max(1, -(-n // batch) - (n % batch == 1 and n > 1))


def test_fit_can_be_called_twice_from_the_same_state():
    data, params, loss_fn = linear_problem(n=40)
    tx = opt.adam(0.01)
    state = train.init_train_state(params, {}, tx)
    runs = [train.fit(loss_fn, tx, state, data, key=jax.random.key(0), epochs=2, batch_size=16,
                      progress=False)[0] for _ in range(2)]
    assert not state.params["w"].is_deleted() and int(state.step) == 0
    np.testing.assert_array_equal(np.asarray(runs[0].params["w"]), np.asarray(runs[1].params["w"]))
    consumed, _ = train.fit(loss_fn, tx, state, data, key=jax.random.key(0), epochs=1,
                            batch_size=16, progress=False, donate=True)
    assert state.params["w"].is_deleted() and not consumed.params["w"].is_deleted()


def test_fit_continues_from_the_state_step(bn_problem):
    """fit(3) then fit(2) from its state equals fit(5): epochs are numbered from state.step."""
    whole, whole_history = fit_bn(bn_problem, bn_problem.state(), 5)
    half, _ = fit_bn(bn_problem, bn_problem.state(), 3)
    resumed, history = fit_bn(bn_problem, half, 2)
    assert history["train_loss"] == whole_history["train_loss"][3:]
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


RESUME = """
import sys
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
import orbax.checkpoint as ocp
sys.path.insert(0, sys.argv[3])
import test_train as t
import optimizers as opt
from fnn import train
(x, y), params, model_state, loss_fn, _ = t.bn_classifier(n=33)
tx = opt.adam(0.01)
abstract = jax.eval_shape(lambda: train.init_train_state(params, model_state, tx))
state = ocp.StandardCheckpointer().restore(sys.argv[1], abstract)
state, _ = train.fit(loss_fn, tx, state, (x, y), key=jax.random.key(3), epochs=5,
                     batch_size=16, progress=False)
np.savez(sys.argv[2], *[np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(state)])
"""


def test_a_checkpoint_restored_in_a_fresh_process_resumes_bit_exactly(bn_problem, tmp_path):
    orbax = pytest.importorskip("orbax.checkpoint")
    whole, _ = fit_bn(bn_problem, bn_problem.state(), 10)
    half, _ = fit_bn(bn_problem, bn_problem.state(), 5)
    checkpointer = orbax.StandardCheckpointer()
    checkpointer.save(tmp_path / "checkpoint", half)
    checkpointer.wait_until_finished()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", RESUME, str(tmp_path / "checkpoint"),
                          str(tmp_path / "resumed.npz"), str(Path(__file__).parent)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = np.load(tmp_path / "resumed.npz")
    leaves = jax.tree_util.tree_leaves(whole)
    assert len(resumed.files) == len(leaves)
    for i, leaf in enumerate(leaves):
        np.testing.assert_array_equal(resumed[f"arr_{i}"], np.asarray(leaf))


def diverging_problem():
    """Least squares with a learning rate far past 2/λ_max: the loss grows to inf, then NaN."""
    data, params, loss_fn = linear_problem(n=32)
    return data, params, loss_fn, opt.sgd(50.0)


def test_fit_stops_when_the_loss_is_not_finite():
    data, params, loss_fn, tx = diverging_problem()
    state = train.init_train_state(params, {}, tx)
    with pytest.raises(train.NonFiniteLossError, match=r"in epoch \d+.*learning rate") as caught:
        train.fit(loss_fn, tx, state, data, key=jax.random.key(0), epochs=100, batch_size=32,
                  progress=False)
    error = caught.value
    assert isinstance(error, FloatingPointError)
    losses = error.history["train_loss"]
    assert len(losses) == error.epoch + 1 and not np.isfinite(losses[-1])
    assert np.isfinite(losses[:-1]).all()
    assert f"epoch {error.epoch}" in str(error)


def test_fit_can_only_warn_about_a_non_finite_loss():
    data, params, loss_fn, tx = diverging_problem()
    state = train.init_train_state(params, {}, tx)
    with pytest.warns(RuntimeWarning, match="training loss is"):
        _, history = train.fit(loss_fn, tx, state, data, key=jax.random.key(0), epochs=100,
                               batch_size=32, progress=False, on_nonfinite="warn")
    assert len(history["train_loss"]) == 100 and not np.isfinite(history["train_loss"][-1])


def test_fit_rejects_labels_outside_the_model_classes(bn_problem):
    p = bn_problem
    x, y = p.data
    state = p.state()
    for bad in (-1, 3):
        labels = y.copy()
        labels[7] = bad
        with pytest.raises(ValueError, match=rf"train_data has 1 labels outside \[0, 3\).*row 7: "
                                             rf"{bad}"):
            train.fit(p.loss_fn, p.tx, state, (x, labels), key=jax.random.key(0), epochs=1,
                      batch_size=16, progress=False, epoch_fn=p.epoch)
        with pytest.raises(ValueError, match=r"val_data has 1 labels outside \[0, 3\)"):
            train.fit(p.loss_fn, p.tx, state, (x, y), key=jax.random.key(0), epochs=1,
                      batch_size=16, progress=False, val_data=(x, labels), eval_fn=p.eval_fn,
                      epoch_fn=p.epoch)
        with pytest.raises(ValueError, match=r"labels outside \[0, 3\)"):
            train.evaluate(p.eval_fn, state, (x, labels))


def test_fit_rejects_non_finite_training_data():
    data, params, loss_fn = linear_problem(n=32)
    x = data[0].copy()
    x[17, 4] = np.nan
    x[20, 1] = np.inf
    tx = opt.sgd(0.1)
    state = train.init_train_state(params, {}, tx)
    message = (r"train_data\[0\] has 2 non-finite values \(NaN: 1, Inf: 1\); first at row 17, "
               "column 4")
    with pytest.raises(ValueError, match=message):
        train.fit(loss_fn, tx, state, (x, data[1]), key=jax.random.key(0), epochs=1,
                  batch_size=8, progress=False)


def test_fit_uses_the_optimizer_it_is_given():
    """Issue 11 item 16: fit(loss, sgd(0.5), state made with sgd(1e-3)) steps with 0.5.

    Reference: one full-batch gradient step of least squares written in float64 NumPy.
    """
    (x, y), params, loss_fn = linear_problem(n=16)
    state = train.init_train_state(params, {}, opt.sgd(1e-3))
    state, _ = train.fit(loss_fn, opt.sgd(0.5), state, (x, y), key=jax.random.key(0), epochs=1,
                         batch_size=16, progress=False)
    residual = x @ np.zeros((5, 3)) - y
    grad_w = 2 * x.T @ residual / residual.size
    np.testing.assert_allclose(np.asarray(state.params["w"]), -0.5 * grad_w, rtol=1e-10)


def _many_leaf_params(n=120):
    rng = np.random.default_rng(0)
    return {f"w{i:03d}": jnp.asarray(rng.standard_normal(3), jnp.float32) for i in range(n)}


def _sum_loss(params, model_state, batch, key):
    loss = sum(jnp.sum((p - batch) ** 2) for p in jax.tree_util.tree_leaves(params))
    return loss, (model_state, {})


def test_packed_none_packs_many_leaves_only_and_matches_unpacked():
    tx = opt.adam(0.1)
    many = _many_leaf_params()
    auto = train.init_train_state(many, {}, tx)
    plain = train.init_train_state(many, {}, tx, packed=False)
    assert isinstance(auto.params, opt.Packed) and not isinstance(plain.params, opt.Packed)
    few = train.init_train_state({"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}, {}, tx)
    assert not isinstance(few.params, opt.Packed)
    step = train.make_train_step(_sum_loss, tx)
    for _ in range(3):
        auto, _ = step(auto, jnp.float32(0.5), jax.random.key(0))
        plain, _ = step(plain, jnp.float32(0.5), jax.random.key(0))
    # reference: per-leaf Adam in float64 NumPy, 3 steps of grad 2 (p - 0.5)
    for k, p0 in many.items():
        p, m, v = np.asarray(p0, np.float64), 0.0, 0.0
        for t in range(1, 4):
            g = 2 * (p - 0.5)
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            p = p - 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        np.testing.assert_allclose(auto.unpacked_params()[k], p, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(plain.params[k], p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw",
                                  "lion", "lamb", "masked_adamw"])
def test_packed_none_works_with_every_optimizer(name):
    many = _many_leaf_params()
    tx = {"sgd": lambda: opt.sgd(0.1), "momentum": lambda: opt.momentum(0.1),
          "adagrad": lambda: opt.adagrad(0.1), "rmsprop": lambda: opt.rmsprop(0.1),
          "adam": lambda: opt.adam(0.1), "adamw": lambda: opt.adamw(0.1),
          "lion": lambda: opt.lion(0.1), "lamb": lambda: opt.lamb(0.1),
          # a mask that cuts through the one buffer: packing is refused, so auto keeps the tree
          "masked_adamw": lambda: opt.adamw(0.1, mask=lambda p: {k: k < "w060" for k in p}),
          }[name]()
    state = train.init_train_state(many, {}, tx)
    packable = name not in ("lamb", "masked_adamw")
    assert isinstance(state.params, opt.Packed) == packable
    state, metrics = train.make_train_step(_sum_loss, tx)(state, jnp.float32(0.5),
                                                          jax.random.key(0))
    assert np.isfinite(metrics["loss"])
    assert state.unpacked_params()["w000"].shape == (3,)


def test_packed_none_with_a_mesh_keeps_the_tree():
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    state = train.init_train_state(_many_leaf_params(), {}, opt.adam(0.1), mesh=mesh)
    assert not isinstance(state.params, opt.Packed)


def test_packed_must_be_none_or_bool():
    with pytest.raises(TypeError, match="packed must be None"):
        train.init_train_state({"w": jnp.ones(2)}, {}, opt.adam(0.1), packed="yes")
