"""Value checks of fnn.data / fnn.train inside jit, vmap and grad, with captured constants.

A check reads values only when they are concrete where we were called (NumPy on the
concrete array, never a traced jnp operation); when it is skipped because the values are
traced, the bad value must show up as NaN in the result, never as a plausible number.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
import optimizers as opt
from fnn import data, train

PREPROCESSORS = [data.center, data.standardize, data.pca_whiten, data.zca_whiten]
CLEAN = np.random.default_rng(0).normal(size=(12, 3))
DIRTY = CLEAN.copy()
DIRTY[4, 1] = np.nan


@pytest.mark.parametrize("prep", PREPROCESSORS)
@pytest.mark.parametrize("constant", [np.asarray, jnp.asarray], ids=["numpy", "jax"])
def test_non_finite_training_data_captured_by_jit_is_rejected(prep, constant):
    captured = constant(DIRTY)
    with pytest.raises(ValueError, match="x_train has 1 non-finite values"):
        jax.jit(lambda z: prep(captured)(z))(CLEAN)


@pytest.mark.parametrize("prep", PREPROCESSORS)
def test_traced_training_data_is_not_checked_and_nan_stays_visible(prep):
    out = jax.jit(lambda x: prep(x)(x))(DIRTY)
    assert np.isnan(np.asarray(out)).any()
    batched = jax.vmap(lambda x: prep(x)(x))(np.stack([CLEAN, DIRTY]))
    assert np.isfinite(np.asarray(batched[0])).all() and np.isnan(np.asarray(batched[1])).any()
    grad = jax.grad(lambda x: (prep(x)(x) ** 2).sum())(DIRTY)
    assert np.isnan(np.asarray(grad)).any()


@pytest.mark.parametrize("prep", PREPROCESSORS)
def test_clean_preprocessors_work_under_jit_vmap_and_grad(prep):
    fitted = prep(CLEAN)
    eager = np.asarray(fitted(CLEAN))
    np.testing.assert_allclose(np.asarray(jax.jit(fitted)(CLEAN)), eager, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.vmap(fitted)(CLEAN)), eager, rtol=1e-10,
                               atol=1e-12)
    refit = jax.jit(lambda x: prep(x)(x))(CLEAN)  # fitted inside the trace
    np.testing.assert_allclose(np.asarray(refit), eager, rtol=1e-8, atol=1e-10)
    assert np.isfinite(np.asarray(jax.grad(lambda x: fitted(x).sum())(CLEAN))).all()


def classifier_problem():
    model = fnn.serial(fnn.Dense(3))
    _, params, model_state = model.init(jax.random.key(0), (-1, 4))
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    loss_fn, eval_fn = train.classifier(model)
    return model, params, model_state, x, y, loss_fn, eval_fn


def test_classifier_loss_with_captured_labels_under_jit_vmap_and_grad():
    _, params, model_state, x, y, loss_fn, _ = classifier_problem()
    key = jax.random.key(0)
    eager = float(loss_fn(params, model_state, (x, y), key)[0])
    jitted = jax.jit(lambda p: loss_fn(p, model_state, (x, y), key)[0])(params)
    assert float(jitted) == pytest.approx(eager, rel=1e-6)
    grads = jax.grad(lambda p: loss_fn(p, model_state, (x, y), key)[0])(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    per_example = jax.vmap(lambda xi: loss_fn(params, model_state, (xi[None], y[:1]), key)[0])(x)
    assert np.isfinite(np.asarray(per_example)).all()


def test_label_check_skips_traced_data_and_runs_on_captured_data():
    _, params, model_state, x, y, loss_fn, _ = classifier_problem()
    bad = y.copy()
    bad[2] = 5

    def checked(x_traced):  # a traced x: the check must skip without touching the values
        loss_fn.check_data("fit", "train_data", (x_traced, bad), params, model_state)
        return x_traced.sum()

    jax.jit(checked)(x)
    jax.vmap(checked)(x[:, None])
    jax.grad(checked)(x)
    with pytest.raises(ValueError, match=r"train_data has 1 labels outside \[0, 3\)"):
        loss_fn.check_data("fit", "train_data", (x, bad), params, model_state)


@pytest.mark.parametrize("label", [-1, 3])
def test_out_of_range_labels_inside_a_trace_never_give_a_finite_loss(label):
    _, params, model_state, x, y, loss_fn, _ = classifier_problem()
    bad = y.copy()
    bad[0] = label
    key = jax.random.key(0)
    try:
        loss = jax.jit(lambda p, labels: loss_fn(p, model_state, (x, labels), key)[0])(params, bad)
    except ValueError:
        return
    assert not np.isfinite(float(loss))


def test_epoch_key_check_is_trace_safe():
    def loss_fn(params, model_state, batch, key):
        return jnp.sum((batch @ params["w"]) ** 2), (model_state, {})

    tx = opt.sgd(0.01)
    state = train.init_train_state({"w": jnp.ones((3, 2))}, {}, tx)
    epoch = train.make_epoch(loss_fn, tx, 4)
    keys = jax.random.split(jax.random.key(0), 2)
    one = jax.jit(epoch)(state, CLEAN, keys[0])[0]
    many = jax.vmap(epoch, in_axes=(None, None, 0))(state, CLEAN, keys)[0]
    np.testing.assert_allclose(np.asarray(many.params["w"][0]), np.asarray(one.params["w"]),
                               rtol=1e-12)
    raw = jax.jit(epoch)(state, CLEAN, jax.random.PRNGKey(0))[0]  # a raw uint32 key works too
    assert np.isfinite(np.asarray(raw.params["w"])).all()
    with pytest.raises(TypeError, match=r"epoch: key must be a JAX PRNG key.*got an array of dtype int32"):
        jax.jit(epoch)(state, CLEAN, jnp.int32(3))
