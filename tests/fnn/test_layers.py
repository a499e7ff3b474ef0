"""fnn layers: the contract (shapes, names, keys, dtypes), gradient checks of every layer in
train and eval mode, and a Dense/BatchNorm/Relu/Dropout model trained with optimizers.adam."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
import init
import optimizers as opt
from fnn import layer_checks

KEY = jax.random.key(0)

# ------------------------------------------------------------------ gradient checks


def test_every_layer_and_loss_passes_the_gradient_check_in_train_and_eval_mode():
    reports = layer_checks.layer_reports(seed=0)
    failures = {case: str(r) for case, r in reports.items() if not r.passed}
    assert not failures, failures
    layers = set(layer_checks.layer_cases())
    assert {name for name, mode in reports if mode == "train"} == layers
    assert {name for name, mode in reports if mode == "eval"} == layers
    for constructor in ("Dense", "Conv2D", "MaxPool2D", "AvgPool2D", "Flatten", "Dropout",
                        "LayerNorm", "RMSNorm", "GroupNorm", "Embedding", "Sigmoid", "Tanh", "HardTanh", "SoftSign", "Relu",
                        "LeakyRelu", "Elu", "Gelu", "Softmax", "LogSoftmax", "serial", "residual",
                        "parallel"):
        assert any(name.startswith(constructor) for name in layers), constructor
    assert {"BatchNorm (dense)", "BatchNorm (conv)", "WeightNorm(Dense)"} <= layers
    losses = {name for name, mode in reports if mode == "-"}
    for loss in ("softmax_cross_entropy", "binary_cross_entropy", "mse", "l2_penalty",
                 "l1_penalty"):
        assert any(name.startswith(loss) for name in losses), loss
    # every leaf of the params and of the input is checked (not only the first)
    dense = reports[("WeightNorm(Dense)", "train")]
    assert set(dense.errors) == {"args[0]['b']", "args[0]['g']", "args[0]['v']", "args[1]"}


def test_the_same_harness_fails_on_a_layer_with_a_wrong_backward_pass():
    @jax.custom_vjp
    def bad_tanh(x):
        return jnp.tanh(x)

    bad_tanh.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2) * 1.01,))
    model = fnn.serial(fnn.Dense(3), fnn.Activation(bad_tanh, "bad_tanh"))
    with jax.enable_x64(True):
        _, params, state = model.init(KEY, (4, 2), jnp.float64)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2)))
        f = layer_checks.layer_objective(model, state, train=True)
        report = fnn.gradcheck.check_grads(f, params, x, raise_on_failure=False)
    assert not report.passed
    assert all(report.errors[p] > 1e-3 for p in report.errors)  # every leaf feeds bad_tanh
    assert set(report.errors) == {"args[0]['dense_0']['w']", "args[0]['dense_0']['b']", "args[1]"}


# ------------------------------------------------------------------ contract


def test_shape_inference_with_unknown_batch_and_readable_stable_names():
    model = fnn.serial(fnn.Conv2D(8, 3), fnn.BatchNorm(), fnn.Relu(), fnn.MaxPool2D(2),
                       fnn.Conv2D(4, 3, stride=2, padding="VALID"), fnn.AvgPool2D(2, padding="SAME"),
                       fnn.Flatten(), fnn.Dropout(0.5), fnn.Dense(10), fnn.LogSoftmax())
    out_shape, params, state = model.init(KEY, (-1, 28, 28, 1))
    assert out_shape == (-1, 10)
    assert list(params) == ["conv2d_0", "batchnorm_0", "relu_0", "maxpool2d_0", "conv2d_1",
                            "avgpool2d_0", "flatten_0", "dropout_0", "dense_0", "logsoftmax_0"]
    assert params["conv2d_0"]["w"].shape == (3, 3, 1, 8)
    assert params["conv2d_1"]["w"].shape == (3, 3, 8, 4)
    assert set(state["batchnorm_0"]) == {"mean", "var"} and state["relu_0"] == {}
    # (28 -> 28 SAME -> 14 pool -> 6 VALID stride 2 -> 3 SAME pool) * 4 channels
    assert params["dense_0"]["w"].shape == (3 * 3 * 4, 10)
    y, _ = model.apply(params, state, jnp.ones((2, 28, 28, 1)))
    assert y.shape == (2, 10)
    traced = jax.eval_shape(lambda x: model.apply(params, state, x, key=KEY, train=True)[0],
                            jax.ShapeDtypeStruct((5, 28, 28, 1), jnp.float32))
    assert traced.shape == (5, 10)
    # the same model and key give the same params: names and values are stable
    _, again, _ = model.init(KEY, (-1, 28, 28, 1))
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)),
                                                         params, again))


def test_a_layer_is_an_init_apply_pair_and_a_hand_made_layer_composes():
    init_fn, apply_fn = fnn.Dense(3)  # unpacks like stax's pairs
    out_shape, params, _ = init_fn(KEY, (-1, 2))
    assert out_shape == (-1, 3) and apply_fn(params, {}, jnp.ones((4, 2)))[0].shape == (4, 3)

    def scale_init(key, input_shape, dtype=jnp.float32):
        return input_shape, {"s": jnp.full(input_shape[-1], 2.0, dtype)}, {}

    def scale_apply(params, state, x, *, key=None, train=False):
        return x * params["s"], state

    model = fnn.serial(fnn.Layer(scale_init, scale_apply), fnn.Dense(2))
    _, params, state = model.init(KEY, (-1, 3))
    assert list(params) == ["layer_0", "dense_0"]
    y, _ = model.apply(params, state, jnp.ones((1, 3)))
    d = params["dense_0"]
    np.testing.assert_allclose(np.asarray(y), 2 * np.ones((1, 3)) @ d["w"] + d["b"], rtol=1e-6)


def test_combinators_give_each_child_its_own_key():
    model = fnn.serial(fnn.Dense(50), fnn.Dense(50))
    _, params, _ = model.init(KEY, (-1, 50))
    assert not np.allclose(params["dense_0"]["w"], params["dense_1"]["w"])
    drops = fnn.parallel(fnn.Dropout(0.5), fnn.Dropout(0.5))
    _, p, s = drops.init(KEY, ((-1, 100), (-1, 100)))
    (a, b), _ = drops.apply(p, s, (jnp.ones((4, 100)), jnp.ones((4, 100))), key=KEY, train=True)
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def _same(a, b):
    """Bit-identical pytrees (same structure, same dtypes, same bits)."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))


def test_inserting_parameter_free_layers_changes_no_other_name_value_or_mask():
    """The issue's case: adding Dropout (and Relu) to a serial model used to rename every later
    layer ("2_dense" -> "3_dense") and re-draw its weights; now names count per layer type and
    keys come from names."""
    def model(*extra):  # extra: parameter-free layers inserted at fixed places
        inner = fnn.serial(fnn.Dense(5), *extra[:1], fnn.BatchNorm())
        return fnn.serial(fnn.Dense(8), *extra, fnn.Relu(), fnn.Dense(6), inner, fnn.Dense(3))

    _, params, state = model().init(KEY, (-1, 4))
    _, more, more_state = model(fnn.Dropout(0.3), fnn.Tanh()).init(KEY, (-1, 4))
    assert list(params) == ["dense_0", "relu_0", "dense_1", "serial_0", "dense_2"]
    assert list(more) == ["dense_0", "dropout_0", "tanh_0", "relu_0", "dense_1", "serial_0",
                          "dense_2"]
    assert list(more["serial_0"]) == ["dense_0", "dropout_0", "batchnorm_0"]
    without_new = {k: v for k, v in more.items() if k not in ("dropout_0", "tanh_0")}
    without_new["serial_0"] = {k: v for k, v in more["serial_0"].items() if k != "dropout_0"}
    _same(params, without_new)  # every other layer's initial params, bit for bit
    assert more_state["serial_0"]["batchnorm_0"].keys() == state["serial_0"]["batchnorm_0"].keys()
    # apply-time keys too: a dropout mask does not move when a layer is inserted before it
    identity = fnn.Activation(lambda x: x, "identity")
    a, b = (fnn.serial(*pre, fnn.Dense(64), fnn.Dropout(0.5)) for pre in ((), (identity,)))
    _, pa, sa = a.init(KEY, (-1, 4))
    _, pb, sb = b.init(KEY, (-1, 4))
    x = jnp.ones((3, 4))
    ya, _ = a.apply(pa, sa, x, key=jax.random.key(3), train=True)
    yb, _ = b.apply(pb, sb, x, key=jax.random.key(3), train=True)
    np.testing.assert_array_equal(np.asarray(ya), np.asarray(yb))
    assert 0.3 < _zero_fraction(ya) < 0.7


def test_user_names_nest_params_and_derive_keys_from_the_name():
    model = fnn.serial(("encoder", fnn.Dense(8)), fnn.Relu(), fnn.Dense(4), ("head", fnn.Dense(3)))
    _, params, state = model.init(KEY, (-1, 5))
    # the unnamed Dense is the second Dense: k counts every earlier Dense, named or not, so
    # naming a layer never renames another
    assert list(params) == ["encoder", "relu_0", "dense_1", "head"] and list(state) == list(params)
    # the documented key: init.leaf_key(key, (DictKey(name),)), here recomputed by hand
    for name, dense, shape in (("encoder", fnn.Dense(8), (-1, 5)), ("head", fnn.Dense(3), (-1, 4))):
        _, alone, _ = dense.init(init.leaf_key(KEY, (jax.tree_util.DictKey(name),)), shape)
        _same(params[name], alone)
    # renaming the encoder leaves every other layer as it was
    _, renamed, _ = fnn.serial(("backbone", fnn.Dense(8)), fnn.Relu(), fnn.Dense(4),
                               ("head", fnn.Dense(3))).init(KEY, (-1, 5))
    _same({k: v for k, v in renamed.items() if k != "backbone"},
          {k: v for k, v in params.items() if k != "encoder"})
    assert not np.array_equal(renamed["backbone"]["w"], params["encoder"]["w"])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5)), jnp.float32)
    y, _ = model.apply(params, state, x)
    h = np.maximum(np.asarray(x) @ params["encoder"]["w"] + params["encoder"]["b"], 0)
    h = h @ params["dense_1"]["w"] + params["dense_1"]["b"]
    np.testing.assert_allclose(np.asarray(y), h @ params["head"]["w"] + params["head"]["b"],
                               rtol=1e-5)
    # parallel and residual take names too; a path names them
    both = fnn.parallel(("left", fnn.Dense(2)), fnn.Dense(2))
    assert list(both.init(KEY, ((-1, 3), (-1, 3)))[1]) == ["left", "dense_1"]
    block = fnn.residual(("inner", fnn.Dense(3)), fnn.Tanh())
    assert list(block.init(KEY, (-1, 3))[1]) == ["inner", "tanh_0"]


def test_parallel_and_residual_against_their_formulas():
    both = fnn.parallel(fnn.Dense(3), fnn.Dense(5))
    shapes, params, state = both.init(KEY, ((-1, 2), (-1, 4)))
    assert shapes == ((-1, 3), (-1, 5))
    xa, xb = jnp.ones((7, 2)), jnp.arange(28.0).reshape(7, 4)
    (a, b), _ = both.apply(params, state, (xa, xb))
    p0, p1 = params["dense_0"], params["dense_1"]
    np.testing.assert_allclose(np.asarray(a), np.asarray(xa @ p0["w"] + p0["b"]), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(b), np.asarray(xb @ p1["w"] + p1["b"]), rtol=1e-12)
    block = fnn.residual(fnn.Dense(4), fnn.Tanh())
    _, params, state = block.init(KEY, (-1, 4))
    x = jnp.arange(8.0).reshape(2, 4)
    y, _ = block.apply(params, state, x)
    d = params["dense_0"]
    np.testing.assert_allclose(y, x + jnp.tanh(x @ d["w"] + d["b"]), rtol=1e-12)


def test_default_and_custom_initializers():
    _, params, _ = fnn.Dense(300).init(KEY, (-1, 200), jnp.float64)
    bound = np.sqrt(6 / 500)  # Xavier uniform: U[-sqrt(6 / (n_in + n_out)), +...]
    assert np.abs(params["w"]).max() <= bound and np.abs(params["w"]).max() > 0.99 * bound
    assert abs(float(np.var(params["w"])) - bound**2 / 3) < 0.05 * bound**2 / 3
    np.testing.assert_array_equal(params["b"], 0)
    _, params, _ = fnn.Dense(3, w_init=init.constant(0.5), b_init=init.ones()).init(KEY, (-1, 2))
    np.testing.assert_array_equal(params["w"], np.full((2, 3), 0.5))
    np.testing.assert_array_equal(params["b"], np.ones(3))
    _, params, _ = fnn.Dense(5, w_init=jax.nn.initializers.he_normal()).init(KEY, (-1, 4))
    assert params["w"].shape == (4, 5)
    _, params, _ = fnn.Conv2D(2, 3, w_init=init.he_normal(), b_init=init.constant(0.1)).init(
        KEY, (-1, 8, 8, 3))
    assert params["w"].shape == (3, 3, 3, 2)
    np.testing.assert_allclose(params["b"], 0.1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64])
def test_params_and_state_are_created_in_dtype_and_state_keeps_it(dtype):
    model = fnn.serial(fnn.Dense(4), fnn.BatchNorm(), fnn.LayerNorm(),
                       fnn.WeightNorm(fnn.Dense(3)))
    _, params, state = model.init(KEY, (-1, 5), dtype)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves((params, state))} == {
        jnp.dtype(dtype)}
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), dtype)
    y, new_state = model.apply(params, state, x, train=True)
    assert y.dtype == jnp.dtype(dtype)
    assert jax.tree_util.tree_map(lambda a: a.dtype, new_state) == jax.tree_util.tree_map(
        lambda a: a.dtype, state)


def test_batchnorm_state_is_a_scan_carry_under_jit():
    layer = fnn.BatchNorm()
    with jax.enable_x64(False):
        _, params, state = layer.init(KEY, (-1, 3))
        xs = jnp.asarray(np.random.default_rng(0).normal(2.0, 1.0, size=(50, 8, 3)), jnp.float32)

        @jax.jit
        def run(state, xs):
            def step(state, x):
                return layer.apply(params, state, x, train=True)[1], None
            return jax.lax.scan(step, state, xs)[0]

        final = run(state, xs)
    assert final["mean"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(final["mean"]), 2.0, atol=0.2)


# ------------------------------------------------------------------ training


def test_dense_batchnorm_relu_dropout_model_learns_with_adam_under_jit():
    x, y = fnn.data.load_digits()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] - x.mean(0)) / 16.0, y[order]
    (xtr, ytr), (xv, yv) = (x[:1400], y[:1400]), (x[1400:], y[1400:])
    model = fnn.serial(fnn.Dense(64), fnn.BatchNorm(), fnn.Relu(), fnn.Dropout(0.2),
                       fnn.Dense(10))
    traces = []
    with jax.enable_x64(False):  # as users run it: float32
        _, params, state = model.init(jax.random.key(1), (-1, 64))
        tx = opt.adam(3e-3)
        opt_state = tx.init(params)

        @jax.jit
        def step(params, state, opt_state, xb, yb, key):
            traces.append(1)

            def loss(p):
                logits, new_state = model.apply(p, state, xb, key=key, train=True)
                return fnn.losses.softmax_cross_entropy(logits, yb), new_state

            (value, state), grads = jax.value_and_grad(loss, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return opt.apply_updates(params, updates), state, opt_state, value

        xtr, ytr = jnp.asarray(xtr, jnp.float32), jnp.asarray(ytr)
        xv, yv = jnp.asarray(xv, jnp.float32), jnp.asarray(yv)
        logits, _ = model.apply(params, state, xv)
        before = float(fnn.losses.accuracy(logits, yv))
        rng = np.random.default_rng(1)
        for epoch in range(8):
            perm = rng.permutation(len(xtr))
            for i in range(len(xtr) // 64):
                batch = perm[i * 64:(i + 1) * 64]
                params, state, opt_state, value = step(params, state, opt_state, xtr[batch],
                                                       ytr[batch], jax.random.key(1000 * epoch + i))
        assert len(traces) == 1  # the whole train step compiled once
        assert state["batchnorm_0"]["mean"].dtype == jnp.float32
        logits, eval_state = model.apply(params, state, xv)  # evaluation: no key needed
        again, _ = model.apply(params, state, xv)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(again))  # deterministic
    for a, b in zip(jax.tree_util.tree_leaves(eval_state), jax.tree_util.tree_leaves(state)):
        assert a is b  # evaluation does not move the running statistics
    accuracy = float(fnn.losses.accuracy(logits, yv))
    assert before < 0.3 and accuracy > 0.93


def _zero_fraction(y):
    return float(np.mean(np.asarray(y) == 0))


def test_serial_parallel_and_residual_give_two_dropouts_different_masks():
    """With one shared key, two Dropout(0.5) would drop the same units: half the units
    would be zero instead of three quarters."""
    x = jnp.ones((4, 500))
    key = jax.random.key(7)
    two = fnn.serial(fnn.Dropout(0.5), fnn.Dropout(0.5))
    y, _ = two.apply({"dropout_0": {}, "dropout_1": {}}, {"dropout_0": {}, "dropout_1": {}}, x,
                     key=key, train=True)
    assert abs(_zero_fraction(y) - 0.75) < 0.04  # independent masks: 1 − 0.5·0.5
    # the documented keys: the child named n gets init.leaf_key(key, (DictKey(n),))
    one = fnn.Dropout(0.5)
    child_key = lambda name: init.leaf_key(key, (jax.tree_util.DictKey(name),))
    first, _ = one.apply({}, {}, x, key=child_key("dropout_0"), train=True)
    second, _ = one.apply({}, {}, first, key=child_key("dropout_1"), train=True)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(second))
    block = fnn.residual(fnn.Dropout(0.5), fnn.Dropout(0.5))
    _, p, s = block.init(KEY, (-1, 500))
    y, _ = block.apply(p, s, x, key=key, train=True)
    assert abs(_zero_fraction(y - x) - 0.75) < 0.04
    both = fnn.parallel(fnn.serial(fnn.Dropout(0.5), fnn.Dropout(0.5)), fnn.Dropout(0.5))
    _, p, s = both.init(KEY, ((-1, 500), (-1, 500)))
    (a, b), _ = both.apply(p, s, (x, x), key=key, train=True)
    assert abs(_zero_fraction(a) - 0.75) < 0.04 and abs(_zero_fraction(b) - 0.5) < 0.04
    assert not np.array_equal(np.asarray(a) == 0, np.asarray(b) == 0)


def test_running_statistics_update_through_residual_serial_and_parallel():
    """A BatchNorm nested in residual/serial/parallel updates its running statistics
    exactly as a BatchNorm on its own input does (float64 NumPy reference)."""
    inner = fnn.serial(fnn.Dense(3), fnn.residual(fnn.BatchNorm(), fnn.Tanh()))
    model = fnn.parallel(inner, fnn.residual(fnn.serial(fnn.Relu(), fnn.BatchNorm())))
    _, params, state = model.init(KEY, ((-1, 2), (-1, 3)), jnp.float64)
    rng = np.random.default_rng(5)
    x1, x2 = rng.normal(1.0, 2.0, size=(6, 2)), rng.normal(0.5, 1.0, size=(6, 3))
    _, new_state = model.apply(params, state, (jnp.asarray(x1), jnp.asarray(x2)), train=True)

    def expected(h):  # one step from mean 0, var 1 with decay 0.9 (unbiased running variance)
        return 0.1 * h.mean(0), 0.9 + 0.1 * h.var(0, ddof=1)

    dense = params["serial_0"]["dense_0"]
    h1 = x1 @ np.asarray(dense["w"]) + np.asarray(dense["b"])
    for got, h in ((new_state["serial_0"]["residual_0"]["batchnorm_0"], h1),
                   (new_state["residual_0"]["serial_0"]["batchnorm_0"], np.maximum(x2, 0))):
        mean, var = expected(h)
        np.testing.assert_allclose(np.asarray(got["mean"]), mean, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(got["var"]), var, rtol=1e-12)
    # evaluation leaves every statistic where it was
    _, same = model.apply(params, new_state, (jnp.asarray(x1), jnp.asarray(x2)))
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: a is b, same, new_state))
