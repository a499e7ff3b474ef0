"""fit from streamed batches, prefetch, batched evaluate, callbacks, EMA evaluation.

References: the in-memory scanned epoch on the same batches (same order and
keys), and float64 NumPy recomputations of SGD, of weighted means and of the
parameter average.
"""

import gc
import threading
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
import optimizers as opt
from fnn import _evaluate, callbacks, data, train
from fnn._evaluate import Evaluator


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def linear(seed=0, n=14):
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=(n, 3)), rng.normal(size=(3, 2))
    return (x, x @ w + 0.1 * rng.normal(size=(n, 2))), {"w": jnp.zeros((3, 2))}


def mse_loss(params, model_state, batch, key):
    xb, yb = batch
    loss = jnp.mean(jnp.sum((xb @ params["w"] - yb) ** 2, -1))
    return loss, (model_state, {})


def order_of(key, epoch):
    """The in-memory epoch's shuffling key: the first half of split(fold_in(key, e))."""
    return jax.random.split(jax.random.fold_in(key, epoch))[0]


# ------------------------------------------------------------------ equal to the in-memory epoch


def test_generator_equals_in_memory_with_batchnorm_and_dropout():
    """Host batches from a generator (fnn.data.batches in the in-memory order) and stream=True
    give the in-memory run bit for bit (params, BatchNorm statistics; history to rounding):
    both run the same step in a lax.scan with the same keys on the same batches."""
    model = fnn.serial(fnn.Dense(8), fnn.BatchNorm(), fnn.Relu(), fnn.Dropout(0.3), fnn.Dense(3))
    _, params, model_state = model.init(jax.random.key(0), (-1, 4), jnp.float64)
    loss_fn, _ = train.classifier(model)
    tx = opt.adam(1e-2)
    state = train.init_train_state(params, model_state, tx)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 4)), rng.integers(0, 3, 50).astype(np.int32)
    key = jax.random.key(2)
    kwargs = dict(key=key, epochs=3, progress=False, steps_per_call=6)
    memory, h_memory = train.fit(loss_fn, tx, state, (x, y), batch_size=8, **kwargs)
    closed = []

    def factory(epoch):
        try:
            yield from data.batches(order_of(key, epoch), (x, y), 8)  # 6 × 8, then 2
        finally:
            closed.append(epoch)

    runs = [train.fit(loss_fn, tx, state, factory, **kwargs),  # chunks of 6 batches, then 1
            train.fit(loss_fn, tx, state, (x, y), batch_size=8, stream=True, **kwargs)]
    for streamed, history in runs:
        assert max_diff(memory.params, streamed.params) == 0.0
        assert max_diff(memory.model_state, streamed.model_state) == 0.0
        assert int(streamed.step) == 3 * 7
        for k in ("train_loss", "train_accuracy"):
            np.testing.assert_allclose(history[k], h_memory[k], rtol=1e-12, err_msg=k)
    assert closed == [0, 1, 2], "every epoch's generator should have run to its end"
    assert not state.params["dense_0"]["w"].is_deleted()


def test_ragged_batches_match_numpy_sgd():
    """Batches of 5, 5, 3 and 1 from a one-shot generator: float64 SGD recomputed in NumPy,
    per-step metrics in the history, the epoch's loss the mean weighted by batch size."""
    (x, y), params = linear()
    sizes = [5, 5, 3, 1]
    cuts = np.cumsum([0] + sizes)
    batches = [(x[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    lr = 0.05
    w, losses = np.zeros((3, 2)), []
    for xb, yb in batches:
        r = xb @ w - yb
        losses.append(np.mean(np.sum(r ** 2, -1)))
        w = w - lr * 2 * xb.T @ r / len(xb)
    tx = opt.sgd(lr)
    state = train.init_train_state(params, {}, tx)
    logged = []
    trained, history = train.fit(
        mse_loss, tx, state, iter(batches), key=jax.random.key(0), epochs=1, progress=False,
        steps_per_call=2, step_metrics=True,
        callbacks=[callbacks.LogEvery(2, log=logged.append)])
    np.testing.assert_allclose(np.asarray(trained.params["w"]), w, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(history["step_loss"], losses, rtol=1e-13)
    np.testing.assert_allclose(history["train_loss"], [np.dot(losses, sizes) / sum(sizes)],
                               rtol=1e-13)
    assert [line.split(":")[0] for line in logged] == ["step 2", "step 4"]
    assert logged[1] == f"step 4: loss {losses[3]:.4g}"


def test_one_shot_iterator_trains_one_pass_only():
    (x, y), params = linear()
    tx = opt.sgd(0.1)
    state = train.init_train_state(params, {}, tx)
    with pytest.raises(ValueError, match="one-shot iterator .* trains one pass, not epochs=2"):
        train.fit(mse_loss, tx, state, iter([(x, y)]), key=jax.random.key(0), epochs=2,
                  progress=False)
    with pytest.raises(TypeError, match="batch_size applies to array data"):
        train.fit(mse_loss, tx, state, lambda e: [(x, y)], key=jax.random.key(0), epochs=1,
                  batch_size=4, progress=False)
    trained, _ = train.fit(mse_loss, tx, state, lambda e: [(x, y)], key=jax.random.key(0),
                           epochs=2, progress=False)
    with pytest.raises(ValueError, match="pass steps_per_epoch="):  # where does it continue?
        train.fit(mse_loss, tx, trained, lambda e: [(x, y)], key=jax.random.key(0), epochs=1,
                  progress=False)


# ------------------------------------------------------------------ errors in the stream


def test_nonfinite_streamed_data_and_loss_are_handled_like_in_memory():
    (x, y), params = linear()
    tx = opt.sgd(0.1)
    state = train.init_train_state(params, {}, tx)
    bad = x.copy()
    bad[9, 1] = np.nan
    kwargs = dict(key=jax.random.key(0), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"fit: train_data.* has 1 non-finite values \(NaN: 1"):
        train.fit(mse_loss, tx, state, (bad, y), batch_size=4, **kwargs)
    with pytest.raises(ValueError, match=r"fit: train_data \(epoch 0, batch 2\)\[0\] has 1 "
                                         r"non-finite values \(NaN: 1"):
        train.fit(mse_loss, tx, state, lambda e: data.batches(None, (bad, y), 4, shuffle=False),
                  **kwargs)
    huge = opt.sgd(1e200)  # finite data, a diverging loss: NonFiniteLossError after the epoch
    for stream in (False, True):
        with pytest.raises(train.NonFiniteLossError, match="epoch 0"):
            train.fit(mse_loss, huge, train.init_train_state(params, {}, huge), (x, y),
                      batch_size=4, stream=stream, **kwargs)


def test_producer_exception_propagates_with_its_traceback():
    (x, y), params = linear()
    tx = opt.sgd(0.1)
    state = train.init_train_state(params, {}, tx)

    def failing_loader(epoch):
        yield x[:4], y[:4]
        yield x[4:8], y[4:8]
        raise RuntimeError("disk went away")

    with pytest.raises(RuntimeError, match="disk went away") as caught:
        train.fit(mse_loss, tx, state, failing_loader, key=jax.random.key(0), epochs=1,
                  progress=False)
    frames = [f.name for f in traceback.extract_tb(caught.value.__traceback__)]
    assert "failing_loader" in frames and "fit" in frames


def test_prefetch_places_batches_and_stops_cleanly():
    events = []

    def source():
        try:
            for i in range(100):
                events.append(i)
                yield {"x": np.full((2, 3), float(i))}
        finally:
            events.append("closed")

    before = threading.active_count()
    device = jax.devices()[0]
    with train.prefetch(source(), size=2, sharding=jax.sharding.SingleDeviceSharding(device)) \
            as batches:
        first = next(batches)
        second = next(batches)
    assert isinstance(first["x"], jax.Array) and first["x"].devices() == {device}
    np.testing.assert_array_equal(np.asarray(second["x"]), np.ones((2, 3)))
    assert events[-1] == "closed" and len(events) <= 2 + 2 + 2, events  # bounded read-ahead
    assert threading.active_count() == before
    events.clear()
    abandoned = train.prefetch(source(), size=1)  # dropped without close: collected, stopped
    next(abandoned)
    del abandoned
    gc.collect()
    for _ in range(200):
        if threading.active_count() == before:
            break
        time.sleep(0.01)
    assert threading.active_count() == before and events[-1] == "closed"
    with pytest.raises(ValueError, match="prefetch: size must be an int >= 1"):
        train.prefetch([], size=0)


# ------------------------------------------------------------------ evaluate


def test_evaluate_batched_equals_one_call_and_numpy():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30,))
    w = jnp.asarray(rng.normal(size=3))

    def eval_fn(params, model_state, batch):
        xb, yb = batch
        r = xb @ params["w"] - yb
        return {"mse": jnp.mean(r ** 2), "pos": jnp.mean((r > 0).astype(jnp.float64))}

    state = train.init_train_state({"w": w}, {}, opt.sgd(0.1))
    r = x @ np.asarray(w) - y
    reference = {"mse": np.mean(r ** 2), "pos": np.mean(r > 0)}
    whole = train.evaluate(eval_fn, state, (x, y))
    batched = train.evaluate(eval_fn, state, (x, y), batch_size=7)  # 4 × 7 and 2
    listed = train.evaluate(eval_fn, state, lambda: [(x[:29], y[:29]), (x[29:], y[29:])])
    for result in (whole, batched, listed):
        for k in reference:
            np.testing.assert_allclose(result[k], reference[k], rtol=1e-14, err_msg=k)
    # one compilation per (eval_fn, batch shape), kept across evaluators and fit calls
    compiled = _evaluate._accumulate._cache_size()
    evaluator = Evaluator("evaluate", eval_fn)
    evaluator({"w": w}, {}, (x, y), 7)
    evaluator({"w": w}, {}, (x, y), 7)
    assert _evaluate._accumulate._cache_size() == compiled, "shapes 7 and 2 were compiled above"
    evaluator({"w": w}, {}, (x, y), 5)
    assert _evaluate._accumulate._cache_size() == compiled + 1, "one more shape: 5"


# ------------------------------------------------------------------ callbacks and EMA


def pull_problem():
    """One step per epoch of SGD on (w − 10)²: w_e = 10 (1 − (1 − 2η)^(e+1)) in closed form."""
    def loss_fn(params, model_state, batch, key):
        return jnp.mean((params["w"] - 10.0) ** 2) + 0.0 * jnp.sum(batch), (model_state, {})

    def eval_fn(params, model_state, batch):
        return {"gap": (params["w"][0] - 3.0) ** 2, "w": params["w"][0]}

    return loss_fn, eval_fn, np.zeros((4, 1)), {"w": jnp.zeros(1)}


def test_early_stopping_returns_the_best_state():
    loss_fn, eval_fn, x, params = pull_problem()
    lr = 0.05
    tx = opt.sgd(lr)
    w = 10 * (1 - (1 - 2 * lr) ** np.arange(1, 21))
    best = int(np.argmin((w - 3) ** 2))  # w passes 3 and moves on to 10
    stop = callbacks.EarlyStopping("val_gap", patience=2)
    trained, history = train.fit(
        loss_fn, tx, train.init_train_state(params, {}, tx), x, key=jax.random.key(0),
        epochs=20, batch_size=4, val_data=x, eval_fn=eval_fn, progress=False, callbacks=[stop])
    assert stop.best_epoch == best and stop.stopped_epoch == best + 3
    assert len(history["val_gap"]) == best + 4
    np.testing.assert_allclose(float(trained.params["w"][0]), w[best], rtol=1e-12)
    assert int(trained.step) == best + 1


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    (x, y), params = linear(n=20)
    tx = opt.adam(0.05)
    state = train.init_train_state(params, {}, tx)
    key = jax.random.key(4)

    def factory(epoch):
        return data.batches(order_of(key, epoch), (x, y), 6)  # 6, 6, 6, 2: 4 steps per epoch

    kwargs = dict(key=key, progress=False, steps_per_call=2)
    whole, _ = train.fit(mse_loss, tx, state, factory, epochs=4, **kwargs)
    save = callbacks.Checkpoint(tmp_path / "run", every_epochs=2)
    train.fit(mse_loss, tx, state, factory, epochs=3, callbacks=[save], **kwargs)
    assert save.saved == [8]  # after epoch 1 (epoch 2 is not a multiple of every_epochs)
    restored = callbacks.restore_checkpoint(tmp_path / "run", state)
    assert type(restored.opt_state) is type(state.opt_state) and int(restored.step) == 8
    resumed, _ = train.fit(mse_loss, tx, restored, factory, epochs=2, steps_per_epoch=4,
                           **kwargs)
    np.testing.assert_array_equal(np.asarray(resumed.params["w"]), np.asarray(whole.params["w"]))


def test_ema_evaluation_uses_the_average():
    loss_fn, eval_fn, x, params = pull_problem()
    lr, decay = 0.05, 0.8
    tx = opt.chain(opt.sgd(lr), opt.ema(decay))
    state = train.init_train_state(params, {}, tx)
    _, history = train.fit(loss_fn, tx, state, x, key=jax.random.key(0), epochs=5, batch_size=4,
                           val_data=x, eval_fn=eval_fn, eval_params="ema", progress=False)
    w, numerator, denominator, averages = 0.0, 0.0, 0.0, []
    for _ in range(5):  # debiased EMA after step t: Σₖ (1−d) d^(t−k) w_k / (1 − d^t)
        w = w - lr * 2 * (w - 10)
        numerator = decay * numerator + (1 - decay) * w
        denominator = decay * denominator + (1 - decay)
        averages.append(numerator / denominator)
    np.testing.assert_allclose(history["val_w"], averages, rtol=1e-12)
    plain = opt.sgd(lr)
    with pytest.raises(ValueError, match="fit: evaluating the averaged params .* ema link"):
        train.fit(loss_fn, plain, train.init_train_state(params, {}, plain), x,
                  key=jax.random.key(0), epochs=1, batch_size=4, val_data=x, eval_fn=eval_fn,
                  eval_params="ema", progress=False)
