"""fnn.sharding on one device: the FSDP rule, placement of optimizer state by tree structure,
padded packing, and the mesh plumbing of fnn.train (8-device runs: tests/multidevice)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import fnn
import optimizers as opt
from fnn import sharding, train


@pytest.mark.parametrize("shape, size, expected", [
    ((512, 1024), 8, P(None, "data")),      # the largest divisible dimension
    ((1024, 512), 8, P("data")),
    ((1024, 1024), 8, P("data")),           # equal: the leading one (a contiguous shard)
    ((3, 3, 64, 128), 8, P(None, None, None, "data")),  # conv kernel HWIO: out features
    ((1000, 10), 8, P("data")),
    ((999, 12), 8, P()),                     # neither dimension divides: replicated
    ((1001, 16), 8, P(None, "data")),       # only the smaller dimension divides
    ((1023,), 1, P()),                       # under MIN_SIZE: replicated
    ((1024,), 1, P("data")),
    ((4, 1024), 8, P(None, "data")),
    ((2048,), 4096, P()),                   # smaller than the axis
])
def test_fsdp_rule(shape, size, expected):
    assert sharding.fsdp_spec(shape, size) == expected


def test_fsdp_rule_min_size_and_axis():
    assert sharding.fsdp_spec((16, 8), 8, min_size=100) == P("data")
    assert sharding.fsdp_spec((16, 8), 8, "batch", min_size=1) == P("batch")
    assert sharding.fsdp_spec((16, 8), 8, min_size=129) == P()


def mesh1():
    return jax.make_mesh((1,), ("data",))


PARAMS = {"dense": {"w": jnp.zeros((64, 32)), "b": jnp.zeros(32)}, "out": {"w": jnp.zeros(
    (32, 48))}}


def test_param_specs_modes_rules_and_prefix_trees():
    mesh = mesh1()
    assert sharding.param_specs(PARAMS, mesh, "replicated") == {
        "dense": {"w": P(), "b": P()}, "out": {"w": P()}}
    assert sharding.param_specs(PARAMS, mesh, "fsdp") == {
        "dense": {"w": P("data"), "b": P()}, "out": {"w": P(None, "data")}}
    seen = []

    def rule(path, shape):
        seen.append((jax.tree_util.keystr(path), shape))
        return P("data") if len(shape) == 2 else P()

    assert sharding.param_specs(PARAMS, mesh, rule)["out"]["w"] == P("data")
    assert ("['dense']['b']", (32,)) in seen and len(seen) == 3
    # a prefix: one spec for a whole subtree
    assert sharding.param_specs(PARAMS, mesh, {"dense": P(), "out": {"w": P("data")}}) == {
        "dense": {"w": P(), "b": P()}, "out": {"w": P("data")}}


class Factored(NamedTuple):
    """A state with one moment shaped like the params and one that is not."""

    count: Any
    mu: Any
    rows: Any


def test_optimizer_state_placed_by_tree_structure():
    """Moments (also the subset under masked, an accumulator's sum, a chain's links) take
    their param's placement; counts, hyperparameters and differently shaped leaves do not."""
    mesh = mesh1()
    placed = sharding.param_shardings(PARAMS, mesh, "fsdp")
    is_weight = lambda p: jax.tree_util.tree_map(lambda x: x.ndim == 2, p)  # noqa: E731
    tx = opt.chain(opt.clip_by_global_norm(1.0), opt.masked(opt.adam(1e-3), is_weight),
                   opt.accumulate(opt.momentum(0.1), every=2))
    shapes = jax.eval_shape(tx.init, PARAMS)
    result = sharding.opt_state_shardings(shapes, PARAMS, placed, mesh)
    spec = lambda s: s.spec  # noqa: E731
    masked_adam = jax.tree_util.tree_map(spec, result[1].inner)
    assert masked_adam.mu["dense"]["w"] == P("data") and masked_adam.nu["out"]["w"] == P(
        None, "data")
    assert not jax.tree_util.tree_leaves(masked_adam.mu["dense"]["b"])  # MaskedNode: no leaf
    assert masked_adam.count == P() and masked_adam.hyperparams["learning_rate"] == P()
    accumulate = result[2]
    assert accumulate.grad_sum["out"]["w"].spec == P(None, "data")
    assert accumulate.inner.velocity["dense"]["w"].spec == P("data")
    assert accumulate.mini_step.spec == P()
    factored = Factored(jnp.zeros(()), PARAMS, {"dense": {"w": jnp.zeros(64)}})
    result = sharding.opt_state_shardings(factored, PARAMS, placed, mesh)
    assert result.mu["dense"]["w"].spec == P("data")
    assert result.rows["dense"]["w"].spec == P(), "a leaf shaped unlike its param is replicated"


def test_pack_pads_to_a_multiple_and_trains_like_the_tree():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(5, 3))), "b": jnp.asarray(rng.normal(size=3))}
    packed = opt.pack(params, multiple_of=8)
    (buffer,) = packed.buffers.values()
    assert buffer.shape == (24,) and float(jnp.max(jnp.abs(buffer[18:]))) == 0.0
    for a, b in zip(jax.tree_util.tree_leaves(opt.unpack(packed)),
                    jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)
    x = jnp.asarray(rng.normal(size=(7, 5)))
    loss = lambda p: jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)  # noqa: E731
    grads = jax.grad(lambda q: loss(opt.unpack(q)))(packed)
    concatenated = opt.packing.pack_like(jax.grad(loss)(params), packed)
    np.testing.assert_allclose(concatenated.buffers["float64"], grads.buffers["float64"],
                               rtol=1e-15, atol=0)
    assert float(jnp.max(jnp.abs(grads.buffers["float64"][18:]))) == 0.0
    for tx in (opt.adam(0.1), opt.adagrad(0.1), opt.momentum(0.1), opt.rmsprop(0.1)):
        tree, tree_state = params, tx.init(params)
        flat, flat_state = packed, tx.init(packed)
        for _ in range(5):
            updates, tree_state = tx.update(jax.grad(loss)(tree), tree_state, tree)
            tree = opt.apply_updates(tree, updates)
            updates, flat_state = tx.update(jax.grad(lambda q: loss(opt.unpack(q)))(flat),
                                            flat_state, flat)
            flat = opt.apply_updates(flat, updates)
        for a, b in zip(jax.tree_util.tree_leaves(opt.unpack(flat)),
                        jax.tree_util.tree_leaves(tree)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        assert float(jnp.max(jnp.abs(flat.buffers["float64"][18:]))) == 0.0, "padding moved"


def test_one_device_mesh_trains_as_without_mesh():
    """The mesh plumbing on a 1-device mesh (what README examples run): init_train_state,
    make_train_step and fit with mesh= give the results without it."""
    mesh = mesh1()
    model = fnn.serial(fnn.Dense(256), fnn.BatchNorm(), fnn.Relu(), fnn.Dropout(0.2),
                       fnn.Dense(3))
    _, params, model_state = model.init(jax.random.key(0), (-1, 4))
    loss_fn, eval_fn = train.classifier(model)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 4)), rng.integers(0, 3, 40).astype(np.int32)
    tx = opt.adam(1e-2)
    plain = train.init_train_state(params, model_state, tx)
    placed = train.init_train_state(params, model_state, tx, mesh=mesh, sharding="fsdp")
    assert placed.params["dense_0"]["w"].sharding.spec == P(None, "data")
    assert placed.opt_state.mu["dense_0"]["w"].sharding.spec == P(None, "data")
    total = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(placed))
    assert list(sharding.bytes_per_device(placed).values()) == [total]
    step, plain_step = train.make_train_step(loss_fn, tx, mesh=mesh), train.make_train_step(
        loss_fn, tx)
    for i in range(3):
        placed, _ = step(placed, (x[:32], y[:32]), jax.random.key(i))
        plain, _ = plain_step(plain, (x[:32], y[:32]), jax.random.key(i))
    np.testing.assert_allclose(placed.params["dense_1"]["w"], plain.params["dense_1"]["w"],
                               rtol=1e-12)
    start = train.init_train_state(params, model_state, tx)
    kwargs = dict(key=jax.random.key(2), epochs=2, batch_size=16, progress=False)
    a, history_a = train.fit(loss_fn, tx, start, (x, y), **kwargs)
    b, history_b = train.fit(loss_fn, tx, start, (x, y), mesh=mesh, sharding="fsdp", **kwargs)
    np.testing.assert_allclose(history_a["train_loss"], history_b["train_loss"], rtol=1e-12)
    np.testing.assert_allclose(a.params["dense_0"]["w"], b.params["dense_0"]["w"], rtol=1e-12)
    assert b.params["dense_0"]["w"].sharding.spec == P(None, "data")
