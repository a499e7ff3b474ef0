"""Bad input to fnn.train, fnn.tuning and fnn.data: each case raises a clear error at the call
that received it, of the right type, naming the argument and what was expected."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import fnn
import optimizers as opt
from fnn import data, train, tuning

RNG = np.random.default_rng(0)
X = RNG.normal(size=(20, 4)).astype(np.float32)
Y = RNG.integers(0, 3, 20).astype(np.int32)
T = RNG.normal(size=(20, 2)).astype(np.float32)
KEY = jax.random.key(0)


def loss_fn(params, model_state, batch, key):
    xb, tb = batch
    return jnp.mean((xb @ params["w"] - tb) ** 2), (model_state, {})


def eval_fn(params, model_state, batch):
    xb, tb = batch
    return {"loss": jnp.mean((xb @ params["w"] - tb) ** 2)}


TX = opt.sgd(0.1)
STATE = train.init_train_state({"w": jnp.zeros((4, 2))}, {}, TX)
MODEL = fnn.serial(fnn.Dense(3))
_, MODEL_PARAMS, MODEL_STATE = MODEL.init(jax.random.key(1), (-1, 4))
CLASSIFIER_LOSS, CLASSIFIER_EVAL = train.classifier(MODEL)
CLASSIFIER_STATE = train.init_train_state(MODEL_PARAMS, MODEL_STATE, TX)
SPACE = {"learning_rate": tuning.log_uniform(1e-3, 1e-1)}
MESH = jax.make_mesh((1,), ("data",))


def fit(**changes):
    kwargs = dict(loss_fn=loss_fn, tx=TX, state=STATE, train_data=(X, T), key=KEY, epochs=1,
                  batch_size=8, progress=False)
    kwargs.update(changes)
    return train.fit(kwargs.pop("loss_fn"), kwargs.pop("tx"), kwargs.pop("state"),
                     kwargs.pop("train_data"), **kwargs)


def fit_classifier(labels, **changes):
    return train.fit(CLASSIFIER_LOSS, TX, CLASSIFIER_STATE, (X, labels), key=KEY, epochs=1,
                     batch_size=8, progress=False, **changes)


def parallel_fit(configs=({"learning_rate": 0.1},), **changes):
    kwargs = dict(key=KEY, epochs=1, batch_size=8)
    kwargs.update(changes)
    return tuning.parallel_fit(loss_fn, TX, STATE, list(configs), (X, T), **kwargs)


def with_value(array, index, value):
    array = array.copy()
    array[index] = value
    return array


CASES = {
    # fnn.train.fit
    "fit epochs < 0": (lambda: fit(epochs=-1), ValueError, "epochs must be an int >= 0"),
    "fit epochs float": (lambda: fit(epochs=2.5), TypeError, "epochs must be an int"),
    "fit batch_size 0": (lambda: fit(batch_size=0), ValueError, "batch_size must be an int >= 1"),
    "fit batch_size str": (lambda: fit(batch_size="8"), TypeError, "batch_size must be an int"),
    "fit int seed as key": (lambda: fit(key=3), TypeError, r"key .*jax.random.key\(3\), not the seed"),
    "fit float key": (lambda: fit(key=1.5), TypeError, "key must be a JAX PRNG key.*got float 1.5"),
    "fit x and y lengths differ": (lambda: fit(train_data=(X, T[:19])), ValueError,
                                   "every array in train_data must have the same leading"),
    "fit no examples": (lambda: fit(train_data=(X[:0], T[:0])), ValueError,
                        "0 examples make no batch"),
    "fit too few examples to drop the remainder": (
        lambda: fit(batch_size=32, drop_remainder=True), ValueError, "20 examples make no batch"),
    "fit val_data feature count": (
        lambda: fit(val_data=(X[:, :3], T), eval_fn=eval_fn), ValueError,
        re.escape("val_data[0] has examples of shape (3,), but train_data[0] has examples of "
                  "shape (4,)")),
    "fit val_data without eval_fn": (lambda: fit(val_data=(X, T)), ValueError,
                                     "val_data was given without eval_fn"),
    "fit eval_fn without val_data": (lambda: fit(eval_fn=eval_fn), ValueError,
                                     "eval_fn was given without val_data"),
    "fit on_nonfinite": (lambda: fit(on_nonfinite="ignore"), ValueError,
                         "on_nonfinite must be 'raise' or 'warn'"),
    "fit state is not a TrainState": (lambda: fit(state={"w": jnp.zeros((4, 2))}), TypeError,
                                      "state must be a TrainState"),
    "fit loss_fn not callable": (lambda: fit(loss_fn="mse"), TypeError,
                                 "loss_fn must be a function"),
    "fit tx is the constructor": (lambda: fit(tx=opt.adam), TypeError, "tx must be an optimizer"),
    "fit progress not bool": (lambda: fit(progress="yes"), TypeError, "progress must be True"),
    "fit NaN in train_data": (
        lambda: fit(train_data=(with_value(X, (3, 2), np.nan), T)), ValueError,
        re.escape("train_data[0] has 1 non-finite values (NaN: 1, Inf: 0); first at row 3, "
                  "column 2")),
    "fit Inf in val_data": (
        lambda: fit(val_data=(X, with_value(T, (5, 1), -np.inf)), eval_fn=eval_fn), ValueError,
        re.escape("val_data[1] has 1 non-finite values (NaN: 0, Inf: 1); first at row 5")),
    "fit label -1": (lambda: fit_classifier(with_value(Y, 4, -1)), ValueError,
                     r"train_data has 1 labels outside \[0, 3\).*row 4: -1"),
    "fit label = classes": (lambda: fit_classifier(with_value(Y, 0, 3)), ValueError,
                            r"train_data has 1 labels outside \[0, 3\)"),
    "fit one-hot labels of the wrong width": (
        lambda: fit_classifier(np.eye(4, dtype=np.float32)[Y]), ValueError,
        r"one-hot labels must have shape \(examples, 3\)"),
    "fit classifier data not a pair": (
        lambda: train.fit(CLASSIFIER_LOSS, TX, CLASSIFIER_STATE, {"x": X, "y": Y}, key=KEY,
                          epochs=1, batch_size=8, progress=False), TypeError,
        r"train_data must be a pair \(x, y\)"),
    # evaluate, make_epoch, make_train_step, init_train_state, classifier
    "evaluate batch_size 0": (lambda: train.evaluate(eval_fn, STATE, (X, T), batch_size=0),
                              ValueError, "evaluate: batch_size must be an int >= 1"),
    "evaluate eval_fn returns a number": (
        lambda: train.evaluate(lambda p, s, b: 1.0, STATE, (X, T)), TypeError,
        "eval_fn must return a dict"),
    "evaluate label out of range": (
        lambda: train.evaluate(CLASSIFIER_EVAL, CLASSIFIER_STATE, (X, with_value(Y, 2, 7))),
        ValueError, r"data has 1 labels outside \[0, 3\)"),
    "make_epoch batch_size 0": (lambda: train.make_epoch(loss_fn, TX, 0), ValueError,
                                "batch_size must be an int >= 1"),
    "make_epoch drop_remainder str": (
        lambda: train.make_epoch(loss_fn, TX, 8, drop_remainder="no"), TypeError,
        "drop_remainder must be True or False"),
    "epoch int seed as key": (lambda: train.make_epoch(loss_fn, TX, 8)(STATE, (X, T), 0),
                              TypeError, r"epoch: key .*jax.random.key\(0\)"),
    "make_train_step donate str": (lambda: train.make_train_step(loss_fn, TX, donate="yes"),
                                   TypeError, "donate must be True or False"),
    "make_train_step mesh not a Mesh": (lambda: train.make_train_step(loss_fn, TX, mesh="cpu"),
                                        TypeError, "mesh must be a jax.sharding.Mesh"),
    "init_train_state integer params": (
        lambda: train.init_train_state({"w": jnp.zeros((2, 2), jnp.int32)}, {}, TX), TypeError,
        r"params\['w'\] has dtype int32"),
    "init_train_state packed str": (
        lambda: train.init_train_state({"w": jnp.zeros(2)}, {}, TX, packed="yes"), TypeError,
        "packed must be None"),
    "classifier l2 < 0": (lambda: train.classifier(MODEL, l2=-1.0), ValueError,
                          "l2 must be a finite number >= 0"),
    "classifier model not a layer": (lambda: train.classifier("mlp"), TypeError,
                                     "model must be a layer"),
    # fnn.data
    "train_val_split val_fraction str": (
        lambda: data.train_val_split(KEY, X, val_fraction="0.2"), TypeError,
        "val_fraction must be a real number"),
    "train_val_split int seed as key": (lambda: data.train_val_split(0, X), TypeError,
                                        r"jax.random.key\(0\)"),
    "batch_indices n < 0": (lambda: data.batch_indices(KEY, -1, 4), ValueError,
                            "n must be an int >= 0"),
    "batch_indices n float": (lambda: data.batch_indices(KEY, 3.0, 4), TypeError,
                              "n must be an int"),
    "batches shuffle str": (lambda: data.batches(KEY, X, 4, shuffle="no"), TypeError,
                            "shuffle must be True or False"),
    "standardize eps str": (lambda: data.standardize(X, eps="1e-8"), TypeError,
                            "eps must be a real number"),
    "standardize eps NaN": (lambda: data.standardize(X, eps=float("nan")), ValueError,
                            "eps must be a finite number >= 0"),
    "standardize NaN data": (lambda: data.standardize(with_value(X, (17, 3), np.nan)),
                             ValueError, "x_train has 1 non-finite values"),
    "center Inf data": (lambda: data.center(with_value(X, (2, 0), np.inf)), ValueError,
                        r"x_train has 1 non-finite values \(NaN: 0, Inf: 1\); first at row 2"),
    "pca_whiten eps negative": (lambda: data.pca_whiten(X, eps=-1e-3), ValueError,
                                "eps must be a finite number >= 0"),
    # fnn.tuning
    "uniform low str": (lambda: tuning.uniform("a", 1.0), TypeError, "low must be a real number"),
    "uniform high str": (lambda: tuning.uniform(0.0, "b"), TypeError,
                         "high must be a real number"),
    "log_uniform high NaN": (lambda: tuning.log_uniform(1e-3, float("nan")), ValueError,
                             "need finite low < high"),
    "choice of a string": (lambda: tuning.choice("abc"), TypeError,
                           "options must be a list or tuple"),
    "sample n < 1": (lambda: tuning.sample(SPACE, KEY, -1), ValueError, "n must be an int >= 1"),
    "sample int seed as key": (lambda: tuning.sample(SPACE, 0, 3), TypeError,
                               r"sample: key .*jax.random.key\(0\)"),
    "grid points 0": (lambda: tuning.grid(SPACE, 0), ValueError, "points must be an int >= 1"),
    "random_search trials 0": (
        lambda: tuning.random_search(lambda c: {"a": 1.0}, SPACE, key=KEY, trials=0, metric="a"),
        ValueError, "trials must be an int >= 1"),
    "random_search mode": (
        lambda: tuning.random_search(lambda c: {"a": 1.0}, SPACE, key=KEY, trials=2, metric="a",
                                     mode="best"), ValueError, "mode must be 'max' or 'min'"),
    "grid_search metric not a str": (
        lambda: tuning.grid_search(lambda c: {"a": 1.0}, SPACE, metric=3), TypeError,
        "metric must be the name of a metric"),
    "grid_search objective returns a number": (
        lambda: tuning.grid_search(lambda c: 1.0, SPACE, metric="a"), TypeError,
        "objective must return a dict of metrics"),
    "refine top 0": (
        lambda: tuning.refine(SPACE, tuning.grid_search(lambda c: {"a": 1.0}, SPACE, metric="a"),
                              top=0), ValueError, "top must be an int >= 1"),
    "refine margin < 0": (
        lambda: tuning.refine(SPACE, tuning.grid_search(lambda c: {"a": 1.0}, SPACE, metric="a"),
                              margin=-0.5), ValueError, "margin must be a finite number >= 0"),
    "parallel_fit epochs 0": (lambda: parallel_fit(epochs=0), ValueError,
                              "epochs must be an int >= 1"),
    "parallel_fit second config invalid": (
        lambda: parallel_fit([{"learning_rate": 0.1}, {"learning_rate": -5.0}]), ValueError,
        r"configs\[1\]: learning_rate must be in \[0, inf\); got -5.0"),
    "parallel_fit config value str": (
        lambda: parallel_fit([{"learning_rate": 0.1}, {"learning_rate": "0.1"}]), TypeError,
        r"configs\[1\]: learning_rate must be a real number"),
    "parallel_fit configs a dict": (lambda: parallel_fit({"learning_rate": 0.1}), TypeError,
                                    "configs must be a list of dicts"),
    "parallel_fit int seed as key": (lambda: parallel_fit(key=0), TypeError,
                                     r"parallel_fit: key .*jax.random.key\(0\)"),
    "parallel_fit val_data feature count": (
        lambda: parallel_fit(val_data=(X[:, :2], T), eval_fn=eval_fn), ValueError,
        r"val_data\[0\] has examples of shape \(2,\)"),
    "parallel_fit NaN in train_data": (
        lambda: tuning.parallel_fit(loss_fn, TX, STATE, [{"learning_rate": 0.1}],
                                    (with_value(X, (1, 1), np.nan), T), key=KEY, epochs=1,
                                    batch_size=8), ValueError, "train_data.0. has 1 non-finite"),
    # placement on a mesh (fnn.sharding)
    "init_train_state sharding without mesh": (
        lambda: train.init_train_state({"w": jnp.zeros(2)}, {}, TX, sharding="fsdp"), ValueError,
        "init_train_state: sharding= places the state on a mesh; pass mesh="),
    "init_train_state sharding unknown": (
        lambda: train.init_train_state({"w": jnp.zeros(2)}, {}, TX, mesh=MESH, sharding="zero3"),
        ValueError, r"init_train_state: sharding must be 'replicated', 'fsdp'.*got 'zero3'"),
    "init_train_state sharding a number": (
        lambda: train.init_train_state({"w": jnp.zeros(2)}, {}, TX, mesh=MESH, sharding=8),
        TypeError, r"init_train_state: sharding must be .*pytree of PartitionSpec; got int 8"),
    "init_train_state batch_axis not in mesh": (
        lambda: train.init_train_state({"w": jnp.zeros(2)}, {}, TX, mesh=MESH,
                                       batch_axis="batch"), ValueError,
        r"batch_axis 'batch' is not an axis of the mesh; its axes are \('data',\)"),
    "init_train_state spec tree of other params": (
        lambda: train.init_train_state({"w": jnp.zeros(2)}, {}, TX, mesh=MESH,
                                       sharding={"v": P()}), ValueError,
        "PartitionSpecs must have the structure of the params"),
    "init_train_state spec of too many dimensions": (
        lambda: train.init_train_state({"w": jnp.zeros(2)}, {}, TX, mesh=MESH,
                                       sharding={"w": P(None, "data")}), ValueError,
        r"names 2 dimensions, but the leaf has shape \(2,\)"),
    "init_train_state mesh not a Mesh": (
        lambda: train.init_train_state({"w": jnp.zeros(2)}, {}, TX, mesh=jax.devices()),
        TypeError, "init_train_state: mesh must be a jax.sharding.Mesh"),
    "make_train_step sharding without mesh": (
        lambda: train.make_train_step(loss_fn, TX, sharding="fsdp"), ValueError,
        "make_train_step: sharding= needs a mesh"),
    "make_epoch sharding without mesh": (
        lambda: train.make_epoch(loss_fn, TX, 8, sharding="fsdp"), ValueError,
        "make_epoch: sharding= needs a mesh"),
    "jit_epoch mesh without state": (lambda: train.jit_epoch(loss_fn, TX, 8, mesh=MESH),
                                     ValueError, "jit_epoch: with a mesh, pass the state"),
    "fit sharding without mesh": (lambda: fit(sharding="fsdp"), ValueError,
                                  "fit: sharding= needs a mesh"),
    "fit mesh not a Mesh": (lambda: fit(mesh="cpu"), TypeError,
                            "fit: mesh must be a jax.sharding.Mesh"),
    "fit sharding unknown": (lambda: fit(mesh=MESH, sharding="sharded"), ValueError,
                             "fit: sharding must be 'replicated', 'fsdp'"),
    "parallel_fit mesh not a Mesh": (lambda: parallel_fit(mesh=8), TypeError,
                                     "parallel_fit: mesh must be a jax.sharding.Mesh"),
    "parallel_fit batch_axis not in mesh": (lambda: parallel_fit(mesh=MESH, batch_axis="x"),
                                            ValueError, "batch_axis 'x' is not an axis"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_named(case):
    make, error, message = CASES[case]
    with pytest.raises(error, match=message):
        make()
