"""fnn.tuning: spaces, grid/random search, refine, and vmapped parallel training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt
from fnn import train, tuning


def test_log_uniform_is_uniform_in_the_exponent():
    values = np.array(tuning.log_uniform(1e-5, 1e-1).sample(jax.random.key(0), 4000))
    assert values.min() >= 1e-5 and values.max() <= 1e-1
    decades = np.histogram(np.log10(values), bins=4, range=(-5, -1))[0]
    # each decade expects 1000 ± 3σ (σ = √(4000·¼·¾) ≈ 27)
    assert np.all(np.abs(decades - 1000) < 3 * math.sqrt(4000 * 0.25 * 0.75)), decades
    linear = np.array(tuning.uniform(1e-5, 1e-1).sample(jax.random.key(0), 4000))
    assert np.mean(linear < 1e-2) < 0.15  # a linear scale almost never samples small rates


def test_log_uniform_refine_and_samples_stay_inside_the_original_range_after_rounding():
    """exp(log(0.1)) rounds to 0.10000000000000002: a refined space (or a sample at the top of
    the range) must still be clipped to the old bounds exactly."""
    space = tuning.log_uniform(1e-5, 1e-1)
    assert math.exp(math.log(1e-1)) > 1e-1  # the rounding this guards against
    fine = space.around([0.05, 0.1], margin=0.5)
    assert space.low <= fine.low and fine.high <= space.high
    assert fine.high == 1e-1
    wide = space.around([1e-5, 1e-1], margin=0.5)
    assert (wide.low, wide.high) == (1e-5, 1e-1)
    edge = tuning.log_uniform(1e-5, 1e-1).around([1e-3], margin=10.0)
    assert edge.high <= 1e-1 and edge.low >= 1e-5


def test_other_dimensions():
    ints = tuning.integers(2, 5).sample(jax.random.key(1), 500)
    assert set(ints) == {2, 3, 4, 5}
    picks = tuning.choice(["sgd", "adam"]).sample(jax.random.key(2), 100)
    assert set(picks) == {"sgd", "adam"}
    u = np.array(tuning.uniform(-1.0, 3.0).sample(jax.random.key(3), 2000))
    assert -1 <= u.min() and u.max() <= 3 and abs(u.mean() - 1.0) < 0.1


def test_grid_combines_every_axis_with_log_spacing():
    configs = tuning.grid({"lr": tuning.log_uniform(1e-4, 1e-2), "opt": tuning.choice(["a", "b"])},
                          points=3)
    assert len(configs) == 6
    np.testing.assert_allclose(sorted({c["lr"] for c in configs}), [1e-4, 1e-3, 1e-2], rtol=1e-12)


def test_searches_sort_best_first_and_refine_narrows():
    target = 3e-3
    objective = lambda c: {"score": -abs(math.log10(c["lr"] / target))}
    space = {"lr": tuning.log_uniform(1e-6, 1.0)}
    coarse = tuning.random_search(objective, space, key=jax.random.key(0), trials=20, metric="score")
    scores = [t.metrics["score"] for t in coarse]
    assert scores == sorted(scores, reverse=True)
    fine_space = tuning.refine(space, coarse, top=3)
    assert fine_space["lr"].low > 1e-6 and fine_space["lr"].high < 1.0
    assert fine_space["lr"].low <= coarse.best.config["lr"] <= fine_space["lr"].high
    fine = tuning.random_search(objective, fine_space, key=jax.random.key(1), trials=20,
                                metric="score")
    assert fine.best.metrics["score"] >= coarse.best.metrics["score"] - 1e-12
    grid = tuning.grid_search(objective, space, points=7, metric="score")
    assert grid.best.config["lr"] == pytest.approx(1e-3)
    assert "lr" in grid.table() and grid.table().count("\n") == 7
    minimized = tuning.grid_search(lambda c: {"loss": c["lr"]}, space, points=4, metric="loss",
                                   mode="min")
    assert minimized.best.config["lr"] == pytest.approx(1e-6)


def classification_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = (x @ rng.normal(size=(6, 3))).argmax(1).astype(np.int32)
    params = {"w": jnp.asarray(rng.normal(size=(6, 3)) * 0.1, jnp.float32), "b": jnp.zeros(3)}
    traces = []

    def loss_fn(p, s, batch, key):
        traces.append(1)
        xb, yb = batch
        z = xb @ p["w"] + p["b"]
        loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), yb[:, None], 1))
        return loss, (s, {"accuracy": jnp.mean(jnp.argmax(z, -1) == yb)})

    def eval_fn(p, s, batch):
        xb, yb = batch
        return {"accuracy": jnp.mean(jnp.argmax(xb @ p["w"] + p["b"], -1) == yb)}

    return (x, y), params, loss_fn, eval_fn, traces


def test_parallel_fit_equals_training_each_configuration_alone_and_compiles_once():
    data, params, loss_fn, eval_fn, traces = classification_problem()
    configs = tuning.sample({"learning_rate": tuning.log_uniform(1e-3, 1.0),
                             "weight_decay": tuning.log_uniform(1e-5, 1e-1)},
                            jax.random.key(0), 16)
    tx = opt.chain(opt.add_decayed_weights(1e-3), opt.sgd(0.1))
    with pytest.raises(ValueError, match="several links"):
        ambiguous = opt.chain(opt.add_decayed_weights(1e-3), opt.adamw())
        tuning.parallel_fit(loss_fn, ambiguous, train.init_train_state(params, {}, ambiguous),
                            configs[:1], data, key=jax.random.key(1), epochs=1, batch_size=32)
    state = train.init_train_state(params, {}, tx)
    results, states = tuning.parallel_fit(loss_fn, tx, state, configs, data,
                                          key=jax.random.key(1), epochs=4, batch_size=32,
                                          val_data=data, eval_fn=eval_fn, return_states=True)
    traced_for_16 = len(traces)
    assert traced_for_16 <= 2  # the scanned batch and the last, smaller one: not 16 × anything
    assert len({round(r["train_loss"], 6) for r in results}) == 16
    assert all(x.shape[0] == 16 for x in jax.tree.leaves(states))
    for i, (config, result) in enumerate(zip(configs[:4], results[:4])):
        alone_tx = opt.chain(opt.add_decayed_weights(config["weight_decay"]),
                             opt.sgd(config["learning_rate"]))
        alone = train.init_train_state(params, {}, alone_tx)
        alone, history = train.fit(loss_fn, alone_tx, alone, data, key=jax.random.key(1),
                                   epochs=4, batch_size=32, val_data=data, eval_fn=eval_fn,
                                   progress=False)
        assert history["train_loss"][-1] == pytest.approx(result["train_loss"], rel=1e-5)
        assert history["val_accuracy"][-1] == pytest.approx(result["val_accuracy"], abs=1e-6)
        # the returned state of configuration i is the one training it alone ends with
        mine = jax.tree.map(lambda x, i=i: x[i], states)
        assert int(mine.step) == int(alone.step)
        for a, b in zip(jax.tree.leaves(mine.params), jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


BAD = [
    (lambda: tuning.log_uniform(0.0, 1.0), ValueError, "log scale needs low > 0"),
    (lambda: tuning.uniform(1.0, 1.0), ValueError, "low < high"),
    (lambda: tuning.integers(1.5, 3), TypeError, "ints"),
    (lambda: tuning.choice([]), ValueError, "must not be empty"),
    (lambda: tuning.grid({"lr": (1e-3, 1e-1)}), TypeError, "must be a dimension"),
    (lambda: tuning.grid_search(lambda c: {"a": 1.0}, {"lr": tuning.uniform(0, 1)}, metric="b"),
     KeyError, "metric 'b'"),
]


@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_input(index):
    make, error, message = BAD[index]
    with pytest.raises(error, match=message):
        make()


def test_parallel_fit_keeps_the_callers_state_and_continues_from_its_step():
    """parallel_fit runs fit's epoch loop: from a state that already trained 2 epochs it equals
    fit continuing from that state, and the state stays usable."""
    data, params, loss_fn, eval_fn, _ = classification_problem()
    tx = opt.sgd(0.1)
    state = train.init_train_state(params, {}, tx)
    state, _ = train.fit(loss_fn, tx, state, data, key=jax.random.key(4), epochs=2, batch_size=32,
                         progress=False)
    results = tuning.parallel_fit(loss_fn, tx, state, [{"learning_rate": 0.05},
                                                       {"learning_rate": 0.2}],
                                  data, key=jax.random.key(4), epochs=2, batch_size=32)
    assert not state.params["w"].is_deleted()
    for lr, result in zip((0.05, 0.2), results):
        alone = state._replace(opt_state=opt.set_hyperparams(state.opt_state, learning_rate=lr))
        _, history = train.fit(loss_fn, tx, alone, data, key=jax.random.key(4), epochs=2,
                               batch_size=32, progress=False)
        assert history["train_loss"][-1] == pytest.approx(result["train_loss"], rel=1e-5)
