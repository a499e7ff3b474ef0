"""The packed path (one flat buffer per dtype) gives the same numbers as the plain tree path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt

is_matrix = lambda p: jax.tree_util.tree_map(lambda x: len(x.shape) >= 2, p)

OPTIMIZERS = {
    "sgd": lambda: opt.sgd(0.05),
    "momentum": lambda: opt.momentum(0.02, nesterov=True),
    "adagrad": lambda: opt.adagrad(0.05),
    "rmsprop": lambda: opt.rmsprop(0.002, centered=True, momentum=0.5),
    "adam": lambda: opt.adam(opt.schedules.cosine_decay(0.01, 50)),
    "adamw_masked": lambda: opt.adamw(0.01, weight_decay=0.1, mask=is_matrix),
    "chain": lambda: opt.chain(opt.clip_by_global_norm(0.5),
                               opt.masked(opt.add_decayed_weights(0.01), is_matrix),
                               opt.adam(0.01)),
    "wrappers": lambda: opt.skip_nonfinite(opt.accumulate(opt.adam(0.01), every=2)),
}


def model(dtype):
    keys = jax.random.split(jax.random.key(0), 5)
    params = {
        "l1": {"w": (jax.random.normal(keys[0], (8, 16)) / 3).astype(dtype), "b": jnp.zeros(16, dtype)},
        "l2": {"w": (jax.random.normal(keys[1], (16, 4)) / 4).astype(dtype), "b": jnp.zeros(4, dtype)},
        "scale": jnp.ones((), dtype),
    }
    x = jax.random.normal(keys[2], (32, 8))
    y = jax.random.normal(keys[3], (32, 4))

    def loss(p):
        p = jax.tree_util.tree_map(lambda a: a.astype(jnp.promote_types(dtype, jnp.float32)), p)
        h = jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"])
        return jnp.mean((p["scale"] * (h @ p["l2"]["w"]) + p["l2"]["b"] - y) ** 2)

    return params, loss


def train_plain(tx, params, loss, steps):
    state = tx.init(params)
    step = jax.jit(lambda p, s: (lambda u, s: (opt.apply_updates(p, u), s))(
        *tx.update(jax.grad(loss)(p), s, p)))
    for _ in range(steps):
        params, state = step(params, state)
    return params


def train_packed(tx, params, loss, steps):
    packed = opt.pack(params, group=lambda path, x: x.ndim >= 2)
    state = tx.init(packed)
    packed_loss = lambda pk: loss(opt.unpack(pk))
    step = jax.jit(lambda p, s: (lambda u, s: (opt.apply_updates(p, u), s))(
        *tx.update(jax.grad(packed_loss)(p), s, p)))
    for _ in range(steps):
        packed, state = step(packed, state)
    assert isinstance(packed, opt.Packed)
    return opt.unpack(packed)


TOLERANCE = {jnp.float64: 1e-12, jnp.float32: 1e-5, jnp.bfloat16: 2e-2, jnp.float16: 2e-3}


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_packed_equals_plain(name, dtype):
    params, loss = model(dtype)
    plain = train_plain(OPTIMIZERS[name](), params, loss, 30)
    packed = train_packed(OPTIMIZERS[name](), params, loss, 30)
    assert float(loss(plain)) < 0.95 * float(loss(params))
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(plain)[0],
                            jax.tree_util.tree_leaves(packed)):
        assert a.dtype == b.dtype == dtype and a.shape == b.shape, path
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype], err_msg=str(path))


def test_gradient_through_unpack_is_the_packed_gradient():
    params, loss = model(jnp.float64)
    packed = opt.pack(params)
    grad_packed = jax.grad(lambda pk: loss(opt.unpack(pk)))(packed)
    expected = opt.pack(jax.grad(loss)(params))
    assert list(grad_packed.buffers) == ["float64"]
    np.testing.assert_allclose(grad_packed.buffers["float64"], expected.buffers["float64"],
                               rtol=1e-13)
    # the backward pass writes each piece in place: no pad (the transpose of slicing) + add
    text = jax.jit(jax.grad(lambda pk: loss(opt.unpack(pk)))).lower(packed).as_text()
    assert "dynamic_update_slice" in text and "stablehlo.pad" not in text


def test_pack_round_trip_and_layout():
    params = {"a": jnp.ones((2, 3)), "b": jnp.arange(4, dtype=jnp.int32), "c": jnp.zeros(())}
    packed = opt.pack(params)
    assert {k: v.shape for k, v in packed.buffers.items()} == {"float64": (7,), "int32": (4,)}
    back = opt.unpack(packed)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_mixed_mask_within_a_buffer_is_an_error():
    params, _ = model(jnp.float32)
    packed = opt.pack(params)  # weights and biases share one buffer
    tx = opt.adamw(mask=is_matrix)
    with pytest.raises(ValueError, match="Pack with group="):
        tx.update(packed, tx.init(packed), packed)


def test_unpack_rejects_a_plain_tree():
    with pytest.raises(TypeError, match="expected a Packed made by optimizers.pack"):
        opt.unpack({"w": jnp.ones(2)})


def test_packed_state_compiles_to_one_update_per_buffer():
    """1000 leaves: the packed step has a handful of kernels, not thousands."""
    params = {f"p{i}": jnp.ones(10) for i in range(1000)}
    packed = opt.pack(params)
    tx = opt.adam(1e-3)
    state = tx.init(packed)
    compiled = jax.jit(lambda g, s, p: tx.update(g, s, p)).lower(packed, state, packed).compile()
    fusions = compiled.as_text().count(" fusion(")
    assert fusions < 20
