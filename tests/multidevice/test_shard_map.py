"""Inside jax.shard_map on 8 devices: every optimizer and wrapper, and BatchNorm(axis_name).

Each sharded run is compared with an independent reference: the same optimizer
(or layer) on the whole, unsharded arrays on one device. The one-pass CPU
kernels must really run on the local blocks (checked in the lowered program),
and tracing for a GPU must work too (the kernels' other branch).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import fnn
import optimizers as opt
from optimizers import _fused, _multi

MESH = jax.make_mesh((8,), ("d",))
ROWS = 8 * _fused.CHUNK // 128  # w's local block on each device is exactly one kernel chunk
PARAM_SPECS = {"w": P("d"), "b": P("d"), "r": P()}  # r: a replicated leaf next to sharded ones


def make_params():
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.normal(size=(ROWS, 128)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(64,)), jnp.float32),
            "r": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)}


def make_grads(step, params):
    rng = np.random.default_rng(100 + step)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)


def put(tree, specs, mesh=MESH):
    """``tree`` placed on ``mesh`` by ``specs`` (a PartitionSpec per leaf, or per subtree)."""
    return jax.tree.map(
        lambda s, sub: jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, s)), sub),
        specs, tree, is_leaf=lambda s: isinstance(s, P))


def state_specs(state, params):
    """Moments placed like their params (matched by shape), every other leaf replicated."""
    by_shape = {p.shape: PARAM_SPECS[k] for k, p in params.items()}
    return jax.tree.map(lambda x: by_shape.get(jnp.shape(x), P()), state)


def spec_of(x):
    """x's PartitionSpec without trailing Nones (P('d', None) is P('d'))."""
    spec = list(x.sharding.spec)
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def assert_trees_close(got, want, rtol=2e-5, atol=2e-6):
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for path_leaf, w in zip(jax.tree_util.tree_flatten_with_path(got)[0], want_leaves):
        path, g = path_leaf
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, jax.tree_util.keystr(path)
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol,
                                   atol=atol, err_msg=jax.tree_util.keystr(path))
    assert len(got_leaves) == len(want_leaves)


is_weight = lambda params: {"w": True, "b": False, "r": True}

# name -> (optimizer, the kernel its sharded step must call, or None for the jnp rule)
CASES = {
    "sgd": (lambda: opt.sgd(0.1), None),
    "momentum": (lambda: opt.momentum(0.05), "fnn_momentum_multi_f32"),
    "nesterov": (lambda: opt.momentum(0.05, nesterov=True), "fnn_momentum_multi_f32"),
    "adagrad": (lambda: opt.adagrad(0.1), "fnn_scaled_multi_f32"),
    "adagrad_eps_in_sqrt": (lambda: opt.adagrad(0.1, eps_in_sqrt=True), "fnn_scaled_multi_f32"),
    "rmsprop": (lambda: opt.rmsprop(0.01), "fnn_scaled_multi_f32"),
    "rmsprop_centered": (lambda: opt.rmsprop(0.01, centered=True), None),
    "rmsprop_momentum": (lambda: opt.rmsprop(0.01, momentum=0.5), None),
    "adam": (lambda: opt.adam(0.01), "fnn_adam_multi_f32"),
    "adamw": (lambda: opt.adamw(0.01, weight_decay=0.1, mask=is_weight), "fnn_adam_multi_f32"),
    # the global norm (≈ 725) is above max_norm, and each device's own block norm (≈ 256)
    # would give another factor: this only matches one device with the norm of the whole tree
    "clip_by_global_norm": (lambda: opt.chain(opt.clip_by_global_norm(100.0), opt.adam(0.01)),
                            "fnn_adam_multi_f32"),
    "masked": (lambda: opt.masked(opt.adam(0.01), is_weight), "fnn_adam_multi_f32"),
    "masked_transform": (lambda: opt.chain(opt.masked(opt.add_decayed_weights(0.1), is_weight),
                                           opt.momentum(0.05)), "fnn_momentum_multi_f32"),
    "skip_nonfinite": (lambda: opt.skip_nonfinite(opt.adam(0.01)), "fnn_adam_multi_f32"),
    "accumulate": (lambda: opt.accumulate(opt.momentum(0.05), every=2), "fnn_momentum_multi_f32"),
    "switch": (lambda: opt.switch(opt.sgd(0.1), opt.adam(0.01)), "fnn_adam_multi_f32"),
}
STEPS = 3


def grads_of_step(i, params):
    grads = make_grads(i, params)
    if i == 1:  # one NaN in the last device's block of w: every device must skip the step
        grads["w"] = grads["w"].at[ROWS - 1, 7].set(jnp.nan)
    return grads


def sharded_and_reference(name, init_inside=False, check_vma=True):
    """(sharded run, one-device run, lowered sharded step) of STEPS steps of CASES[name]."""
    tx = CASES[name][0]()
    params = make_params()
    state = tx.init(params)
    if name == "switch":
        state = state._replace(index=jnp.int32(1))  # Adam acts; SGD's state is kept
    specs = state_specs(state, params)

    def step(p, g, s):
        return opt.step(tx, g, s, p)

    sharded = jax.jit(jax.shard_map(step, mesh=MESH, in_specs=(PARAM_SPECS, PARAM_SPECS, specs),
                                    out_specs=(PARAM_SPECS, specs), check_vma=check_vma))
    if init_inside:  # the state made inside shard_map: its moments do not vary yet
        made = jax.jit(jax.shard_map(tx.init, mesh=MESH, in_specs=(PARAM_SPECS,),
                                     out_specs=specs))(put(params, PARAM_SPECS))
        if name == "switch":
            made = made._replace(index=jnp.int32(1))
    else:
        made = put(state, specs)
    p_sharded, s_sharded = put(params, PARAM_SPECS), made
    p_one, s_one = params, state
    one_device = jax.jit(step)
    lowered = None
    for i in range(STEPS):
        grads = grads_of_step(i, params) if name == "skip_nonfinite" else make_grads(i, params)
        g_sharded = put(grads, PARAM_SPECS)
        if lowered is None:
            lowered = sharded.lower(p_sharded, g_sharded, s_sharded)
        p_sharded, s_sharded = sharded(p_sharded, g_sharded, s_sharded)
        p_one, s_one = one_device(p_one, grads, s_one)
    return (p_sharded, s_sharded), (p_one, s_one), lowered


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_optimizer_and_wrapper_steps_inside_shard_map(name):
    """Params, gradients and moments split P('d') (and one replicated leaf): after 3 steps
    the params and the whole state equal one device stepping the unsharded arrays."""
    assert _fused.available()  # CI builds the kernels: the sharded steps must use them
    (p, s), (p_ref, s_ref), lowered = sharded_and_reference(name)
    assert_trees_close(p, p_ref)
    assert_trees_close(s, s_ref)
    assert float(jnp.max(jnp.abs(p["w"] - make_params()["w"]))) > 1e-4  # it did step
    kernel = CASES[name][1]
    program = lowered.as_text()
    if kernel is not None:
        # on each device's block in place: operands of the local shape, not the global one
        calls = [line for line in program.splitlines() if f"custom_call @{kernel}" in line]
        # the kernel takes each leaf flattened: the local block's ROWS // 8 × 128 elements
        assert calls and all(f"tensor<{ROWS // 8 * 128}xf32>" in c for c in calls), calls
    else:
        assert "custom_call @fnn_" not in program
    if name == "skip_nonfinite":
        assert int(s.skipped) == 1 == int(s_ref.skipped)
        assert spec_of(p["w"]) == P("d") and spec_of(s.skipped) == P()


@pytest.mark.parametrize("name", ["skip_nonfinite", "switch"])
def test_state_made_inside_shard_map(name):
    """tx.init inside shard_map gives moments that do not vary over 'd' yet; the first
    update makes them vary (cond and switch branches must still agree on their types)."""
    (p, s), (p_ref, s_ref), _ = sharded_and_reference(name, init_inside=True)
    assert_trees_close(p, p_ref)
    assert_trees_close(s, s_ref)


def test_skip_nonfinite_without_vma_checks():
    """With check_vma=False JAX records no varying axes; the NaN in one device's block must
    still make every device skip (else their step counts and states would drift apart)."""
    (p, s), (p_ref, s_ref), _ = sharded_and_reference("skip_nonfinite", check_vma=False)
    assert_trees_close(p, p_ref)
    assert_trees_close(s, s_ref)
    assert int(s.skipped) == 1


@pytest.mark.parametrize("name", ["momentum", "adagrad", "adamw", "clip_by_global_norm",
                                  "skip_nonfinite"])  # each kernel, the reductions, a cond
def test_shard_map_step_lowers_for_a_gpu(name):
    """Tracing and lowering for CUDA (no GPU needed) take the jnp branch, with no kernel."""
    tx = CASES[name][0]()
    params = make_params()
    state = tx.init(params)
    specs = state_specs(state, params)

    def step(p, g, s):
        return opt.step(tx, g, s, p)

    sharded = jax.jit(jax.shard_map(step, mesh=MESH, in_specs=(PARAM_SPECS, PARAM_SPECS, specs),
                                    out_specs=(PARAM_SPECS, specs)))
    args = put(params, PARAM_SPECS), put(make_grads(0, params), PARAM_SPECS), put(state, specs)
    program = sharded.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert "custom_call @fnn_" not in program
    assert "stablehlo.sqrt" in program or "stablehlo.rsqrt" in program or name == "momentum"


def adam_one_leaf(coef, g, p, m, v):
    """The multi-tensor Adam kernel on a list of one leaf: (p, m, v) new."""
    return tuple(x[0] for x in _multi.adam_multi(coef, None, [g], [p], [m], [v]))


def test_mixed_varying_operands_of_one_kernel():
    """Any mix of sharded and replicated operands of one kernel call (the param replicated
    and its gradient sharded, or the reverse, or the moment alone sharded) types and
    computes like the jnp formula; these failed at trace time before."""
    rows = _fused.CHUNK // 128
    rng = np.random.default_rng(3)
    coef = _fused.adam_coefficients(jnp.int32(3), 0.01, 0.9, 0.999, 1e-8)
    for g_spec, p_spec, m_spec in [(P("d"), P(), P()), (P(), P("d"), P()), (P(), P(), P("d")),
                                   (P(), P("d"), P("d")), (P("d"), P(), P("d"))]:
        def make(spec, scale):
            shape = (8 * rows, 128) if spec == P("d") else (rows, 128)
            return jax.device_put(jnp.asarray(scale * rng.normal(size=shape), jnp.float32),
                                  NamedSharding(MESH, spec))
        g, p, m, v = make(g_spec, 1), make(p_spec, 1), make(m_spec, 0.1), make(m_spec, 0.01)
        v = jnp.abs(v)
        out = P("d")
        kernel = jax.jit(jax.shard_map(adam_one_leaf, mesh=MESH,
                                       in_specs=(P(), g_spec, p_spec, m_spec, m_spec),
                                       out_specs=(out, out, out)))
        formula = jax.jit(jax.shard_map(_fused.adam_reference, mesh=MESH,
                                        in_specs=(P(), g_spec, p_spec, m_spec, m_spec),
                                        out_specs=(out, out, out)))
        assert "custom_call @fnn_adam_multi_f32" in kernel.lower(coef, g, p, m, v).as_text()
        for a, b in zip(kernel(coef, g, p, m, v), formula(coef, g, p, m, v)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-7)


def test_packed_params_inside_shard_map():
    """A packed buffer split P('d') (each device a contiguous block of it): AdamW with a
    mask over the unpacked tree steps it on the kernel like one device steps the whole."""
    params = make_params()
    packed = opt.pack(params, group=lambda path, leaf: leaf.ndim >= 2)
    sizes = dict(packed.layout.sizes)
    # w and r in one buffer, b alone: both split over the 8 devices
    assert all(n % 8 == 0 for n in sizes.values()), sizes
    tx = opt.adamw(0.01, weight_decay=0.1,
                   mask=lambda p: jax.tree.map(lambda x: len(x.shape) >= 2, p))
    state = tx.init(packed)
    specs = jax.tree.map(lambda x: P("d") if jnp.ndim(x) == 1 else P(), packed)
    s_specs = jax.tree.map(lambda x: P("d") if jnp.ndim(x) == 1 else P(), state)

    def step(p, g, s):
        return opt.step(tx, g, s, p)

    sharded = jax.jit(jax.shard_map(step, mesh=MESH, in_specs=(specs, specs, s_specs),
                                    out_specs=(specs, s_specs)))
    one_device = jax.jit(step)
    p_sharded, s_sharded = put(packed, specs), put(state, s_specs)
    p_one, s_one = packed, state
    for i in range(3):
        grads = opt.pack(make_grads(i, params), group=lambda path, leaf: leaf.ndim >= 2)
        if i == 0:
            assert "custom_call @fnn_adam_multi_f32" in sharded.lower(
                p_sharded, put(grads, specs), s_sharded).as_text()
        p_sharded, s_sharded = sharded(p_sharded, put(grads, specs), s_sharded)
        p_one, s_one = one_device(p_one, grads, s_one)
    assert_trees_close(p_sharded, p_one)
    assert_trees_close(s_sharded, s_one)


# --------------------------------------------------------------------------- BatchNorm


def batchnorm_problem(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(loc=3.0, scale=2.0, size=shape))  # float64
    features = shape[-1]
    params = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, features)),
              "offset": jnp.asarray(rng.normal(size=features))}
    state = {"mean": jnp.asarray(rng.normal(size=features)),
             "var": jnp.asarray(rng.uniform(0.5, 2.0, features))}
    target = jnp.asarray(rng.normal(size=shape))
    return x, params, state, target


def bn_loss(layer, params, state, x, target, axis_name=None):
    """Mean squared error over the whole batch (pmean of the devices' equal-sized means)."""
    y, new_state = layer.apply(params, state, x, train=True)
    loss = jnp.mean((y - target) ** 2 * jnp.arange(1, y.shape[-1] + 1))
    if axis_name is not None:
        loss = jax.lax.pmean(loss, axis_name)
    return loss, (y, new_state)


@pytest.mark.parametrize("shape", [(32, 6), (16, 3, 3, 4), (8, 5)],
                         ids=["dense", "conv", "one_example_per_device"])
def test_batchnorm_axis_name_equals_one_device_on_the_whole_batch(shape):
    """float64: outputs, running statistics (the same on every device, unbiased with the
    global count) and gradients (params and input) equal single-device BatchNorm."""
    x, params, state, target = batchnorm_problem(shape)
    grad = jax.value_and_grad(bn_loss, argnums=(1, 3), has_aux=True)
    (loss, (y, new_state)), (g_params, g_x) = grad(fnn.BatchNorm(decay=0.8), params, state, x,
                                                   target)
    layer = fnn.BatchNorm(decay=0.8, axis_name="d")
    sharded = jax.jit(jax.shard_map(
        lambda p, s, x, t: grad(layer, p, s, x, t, "d"), mesh=MESH,
        in_specs=(P(), P(), P("d"), P("d")),
        out_specs=((P(), (P("d"), P())), (P(), P("d")))))
    args = put((params, state, x, target), (P(), P(), P("d"), P("d")))
    (loss_d, (y_d, state_d)), (g_params_d, g_x_d) = sharded(*args)
    for got, want in [(loss_d, loss), (y_d, y), (state_d, new_state), (g_params_d, g_params),
                      (g_x_d, g_x)]:
        assert_trees_close(got, want, rtol=1e-12, atol=1e-13)
    # per-device statistics (no axis_name) really differ, or cannot be formed at all
    local = fnn.BatchNorm(decay=0.8)
    per_device = jax.jit(jax.shard_map(
        lambda p, s, x: local.apply(p, s, x, train=True)[0], mesh=MESH,
        in_specs=(P(), P(), P("d")), out_specs=P("d")))
    if shape[0] == 8:
        with pytest.raises(ValueError, match="more than one value per feature"):
            per_device(*args[:3])
    else:
        assert float(jnp.max(jnp.abs(per_device(*args[:3]) - y))) > 1e-3
    m = x.size // shape[-1]
    biased = jnp.var(x.reshape(-1, shape[-1]), axis=0)
    np.testing.assert_allclose(state_d["var"], 0.8 * state["var"] + 0.2 * biased * m / (m - 1),
                               rtol=1e-12)


def test_batchnorm_axis_name_under_vmap():
    """jax.vmap(..., axis_name=...) binds the axis as well: the batch split into 4 groups."""
    x, params, state, target = batchnorm_problem((24, 5), seed=1)
    want = fnn.BatchNorm().apply(params, state, x, train=True)
    layer = fnn.BatchNorm(axis_name="g")
    y, new_state = jax.vmap(lambda xb: layer.apply(params, state, xb, train=True),
                            axis_name="g")(x.reshape(4, 6, 5))
    np.testing.assert_allclose(y.reshape(24, 5), want[0], rtol=1e-12, atol=1e-13)
    for k in ("mean", "var"):
        assert np.all(np.asarray(new_state[k]) == np.asarray(new_state[k])[:1])  # same in all
        np.testing.assert_allclose(new_state[k][0], want[1][k], rtol=1e-12)


def test_batchnorm_axis_name_gradcheck_in_float64():
    """fnn's gradient checker (finite differences) on a loss computed inside shard_map."""
    x, params, state, target = batchnorm_problem((16, 3), seed=2)
    layer = fnn.BatchNorm(axis_name="d")
    sharded = jax.shard_map(
        lambda p, x, t: bn_loss(layer, p, state, x, t, "d")[0], mesh=MESH,
        in_specs=(P(), P("d"), P("d")), out_specs=P())
    # jax.make_mesh's axes are Explicit: arrays enter shard_map already split as in_specs say
    split = lambda a: jax.reshard(a, NamedSharding(MESH, P("d")))
    loss = lambda p, x, t: sharded(p, split(x), split(t))
    report = fnn.gradcheck.check_grads(loss, params, x, target, argnums=(0, 1), tol=1e-6)
    assert report.max_error < 1e-6


def test_batchnorm_axis_name_over_two_mesh_axes():
    """A tuple of axis names: the batch split over a 2 × 4 mesh, statistics over both."""
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    x, params, state, _ = batchnorm_problem((16, 4), seed=3)
    want_y, want_state = fnn.BatchNorm().apply(params, state, x, train=True)
    layer = fnn.BatchNorm(axis_name=("a", "b"))
    spec = P(("a", "b"))
    x_sharded = jax.device_put(x, NamedSharding(mesh, spec))
    y, new_state = jax.jit(jax.shard_map(
        lambda x: layer.apply(params, state, x, train=True), mesh=mesh,
        in_specs=(spec,), out_specs=(spec, P())))(x_sharded)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-13)
    assert_trees_close(new_state, want_state, rtol=1e-12, atol=1e-13)


def test_batchnorm_axis_name_errors():
    """A name of the wrong type fails at construction; an unbound name at apply, as JAX's
    NameError with the layer, the name and the fix in the message."""
    for bad in (0, ["d"], ("d", 1), (), b"d"):
        with pytest.raises(TypeError, match="BatchNorm: axis_name must be None, the name of a "
                                            "mesh axis"):
            fnn.BatchNorm(axis_name=bad)
    x, params, state, _ = batchnorm_problem((8, 3))
    layer = fnn.BatchNorm(axis_name="d")
    for run in (lambda: layer.apply(params, state, x, train=True),
                lambda: jax.jit(lambda x: layer.apply(params, state, x, train=True))(x)):
        with pytest.raises(NameError, match=r"BatchNorm\(axis_name='d'\): the axis name 'd' is "
                                            r"not bound here.*jax.shard_map"):
            run()
    # evaluation and init communicate nothing: they work anywhere
    y, _ = layer.apply(params, state, x, train=False)
    np.testing.assert_allclose(y, fnn.BatchNorm().apply(params, state, x)[0], rtol=0, atol=0)
    assert layer.init(jax.random.key(0), (-1, 3))[0] == (-1, 3)


# --------------------------------------------------------------------------- together


def test_fsdp_style_training_with_batchnorm_inside_shard_map():
    """A model trained inside shard_map: params split P('d') (gathered for the forward pass,
    their gradients scattered back), the batch split too, BatchNorm(axis_name='d'), Adam on
    the local blocks. 20 steps equal one device training on the whole batch (float32)."""
    def model(axis_name):
        # BatchNorm after Relu: no param whose gradient is 0 in exact arithmetic (a bias
        # just before BatchNorm), which Adam would turn into steps of rounding noise
        return fnn.serial(fnn.Dense(64), fnn.Relu(), fnn.BatchNorm(axis_name=axis_name),
                          fnn.Dense(4))
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(64, 128)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
    _, params, model_state = model(None).init(jax.random.key(0), (-1, 128))
    # every leaf whose first axis splits in 8 is split
    specs = jax.tree.map(lambda p: P("d") if p.shape[0] % 8 == 0 else P(), params)
    assert specs["dense_0"]["w"] == P("d") and specs["dense_1"]["b"] == P()
    tx = opt.adam(1e-2)

    def train_step(net, gather, axis_name, params, model_state, opt_state, xb, yb):
        def loss_fn(params):
            full = jax.tree.map(gather, params, specs)
            out, new_state = net.apply(full, model_state, xb, train=True)
            loss = jnp.mean((out - yb) ** 2)
            return (jax.lax.pmean(loss, axis_name) if axis_name else loss), new_state
        (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return opt.apply_updates(params, updates), model_state, opt_state, loss

    gather = lambda p, s: jax.lax.all_gather(p, "d", tiled=True) if s == P("d") else p
    o_specs = state_specs_like(tx.init(params), params, specs)
    m_specs = jax.tree.map(lambda _: P(), model_state)
    sharded = jax.jit(jax.shard_map(
        functools.partial(train_step, model("d"), gather, "d"), mesh=MESH,
        in_specs=(specs, m_specs, o_specs, P("d"), P("d")),
        out_specs=(specs, m_specs, o_specs, P())))
    one_device = jax.jit(functools.partial(train_step, model(None), lambda p, s: p, None))
    a = put(params, specs), put(model_state, m_specs), put(tx.init(params), o_specs)
    b = params, model_state, tx.init(params)
    x_sharded, y_sharded = put((x, y), (P("d"), P("d")))
    for _ in range(20):
        *a, loss_a = sharded(*a, x_sharded, y_sharded)
        *b, loss_b = one_device(*b, x, y)
    assert float(loss_b) < 0.5 * float(one_device(params, model_state, tx.init(params), x, y)[3])
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    for got, want in zip(a, b):
        assert_trees_close(got, want, rtol=1e-4, atol=2e-5)
    assert spec_of(a[0]["dense_0"]["w"]) == P("d") == spec_of(a[2].mu["dense_0"]["w"])


def state_specs_like(state, params, specs):
    """Each moment leaf gets its param's spec (a moment tree has the params' structure)."""
    param_structure = jax.tree.structure(params)

    def place(subtree):
        if jax.tree.structure(subtree) == param_structure:
            return specs
        return jax.tree.map(lambda _: P(), subtree)

    return type(state)(*[place(field) for field in state])
