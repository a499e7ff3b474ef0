"""Sharded training state checkpointed with orbax on 8 devices: restored bit-exactly with
its shardings (every device gets back its own shard), restorable onto other shardings, and a
restored run continues exactly like the original.

Params and Adam moments are placed by hand with ``jax.device_put`` and ``NamedSharding``
(each moment like its param, counters and hyperparameters replicated), so this test does not
depend on the train step's own placement rules.
"""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optimizers as opt

SPECS = {
    "w": P("data", None),  # 131,072 float32: the one-pass kernel path, sharded
    "v": P(None, "data"),  # split along its second axis
    "b": P(),  # small: replicated
}


def mesh():
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    return jax.make_mesh((8,), ("data",))


def shardings(m, tx, params):
    """Shardings of (params, opt_state): every moment like its param, the rest replicated."""
    params_sharding = {k: NamedSharding(m, spec) for k, spec in SPECS.items()}
    replicated = NamedSharding(m, P())
    state = jax.tree.map(lambda _: replicated, jax.eval_shape(tx.init, params))
    return params_sharding, state._replace(mu=params_sharding, nu=params_sharding)


def build():
    m = mesh()
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(512, 256)).astype(np.float32),
              "v": rng.normal(size=(16, 64)).astype(np.float32),
              "b": np.zeros(8, np.float32)}
    tx = opt.adam(0.01)
    params_sharding, state_sharding = shardings(m, tx, params)
    params = jax.device_put(params, params_sharding)
    opt_state = jax.device_put(tx.init(params), state_sharding)

    def loss(p):
        return jnp.sum(jnp.tanh(p["w"]) ** 2) + jnp.sum(p["v"] ** 2) + jnp.sum((p["b"] - 1) ** 2)

    def step(params, opt_state):
        return opt.step(tx, jax.grad(loss)(params), opt_state, params)

    step = jax.jit(step, in_shardings=(params_sharding, state_sharding),
                   out_shardings=(params_sharding, state_sharding))
    for _ in range(3):
        params, opt_state = step(params, opt_state)
    return m, step, (params, opt_state)


def abstract(tree, sharding_of=lambda x: x.sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_of(x)),
                        tree)


def assert_same_shards(restored, original):
    assert jax.tree.structure(restored) == jax.tree.structure(original)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(original)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)
        shards_a = sorted(a.addressable_shards, key=lambda s: s.device.id)
        shards_b = sorted(b.addressable_shards, key=lambda s: s.device.id)
        assert len(shards_a) == len(shards_b) == 8
        for x, y in zip(shards_a, shards_b):
            assert x.device == y.device and x.index == y.index
            assert np.asarray(x.data).tobytes() == np.asarray(y.data).tobytes()


def test_sharded_state_round_trips_with_its_shardings(tmp_path):
    m, step, state = build()
    params, opt_state = state
    # the layout is the intended one before saving: w split by rows over 8 devices
    assert params["w"].addressable_shards[0].data.shape == (64, 256)
    assert opt_state.mu["v"].addressable_shards[0].data.shape == (16, 8)
    # w's steps ran the one-pass kernel, on each device's shard
    assert 'custom_call_target="fnn_adam_multi_f32"' in step.lower(*state).compile().as_text()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "state", abstract(state))
        # the same checkpoint onto another layout: everything replicated
        replicated = checkpointer.restore(
            tmp_path / "state", abstract(state, lambda x: NamedSharding(m, P())))
    assert_same_shards(restored, state)
    assert type(restored[1]) is opt.AdamState
    for a, b in zip(jax.tree.leaves(replicated), jax.tree.leaves(state)):
        assert a.sharding.is_fully_replicated
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the restored state continues exactly like the original, with the same compiled step
    compiled = step._cache_size()
    assert_same_shards(step(*restored), step(*state))
    assert step._cache_size() == compiled
