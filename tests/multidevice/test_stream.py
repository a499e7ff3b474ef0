"""Streamed training on 8 devices: batches prefetched onto the mesh, split over its batch axis.

The reference is the same streamed run on one device (and the in-memory run on the mesh).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import fnn
import optimizers as opt
from fnn import data, train


def test_streamed_fit_on_a_mesh_equals_one_device():
    """Batches of 24 (split over the 8 devices) and a last batch of 4 (replicated), FSDP
    state, Dropout: equal to one device to float64 rounding, the state kept in its placement."""
    model = fnn.serial(fnn.Dense(64), fnn.Relu(), fnn.Dropout(0.3), fnn.Dense(10))
    _, params, model_state = model.init(jax.random.key(0), (-1, 16), jnp.float64)
    loss_fn, _ = train.classifier(model)
    tx = opt.adam(1e-2)
    state = train.init_train_state(params, model_state, tx)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((100, 16)), rng.integers(0, 10, 100).astype(np.int32)
    key = jax.random.key(1)

    def factory(epoch):
        return data.batches(jax.random.split(jax.random.fold_in(key, epoch))[0], (x, y), 24)

    kwargs = dict(key=key, epochs=2, progress=False, steps_per_call=4)
    alone, history = train.fit(loss_fn, tx, state, factory, **kwargs)
    mesh = jax.make_mesh((8,), ("data",))
    spread, spread_history = train.fit(loss_fn, tx, state, factory, mesh=mesh, sharding="fsdp",
                                       **kwargs)
    for a, b in zip(jax.tree_util.tree_leaves(alone.params),
                    jax.tree_util.tree_leaves(spread.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-12)
    np.testing.assert_allclose(spread_history["train_loss"], history["train_loss"], rtol=1e-12)
    assert spread.params["dense_0"]["w"].sharding.spec == P(None, "data")
    assert spread.opt_state.mu["dense_0"]["w"].sharding.spec == P(None, "data")
    assert not state.params["dense_0"]["w"].is_deleted()


def test_prefetch_splits_batches_over_the_mesh():
    mesh = jax.make_mesh((8,), ("data",))
    split = jax.sharding.NamedSharding(mesh, P("data"))
    batches = [np.arange(16.0).reshape(8, 2), np.arange(32.0).reshape(16, 2)]
    with train.prefetch(batches, sharding=split) as placed:
        for batch, host in zip(placed, batches):
            assert batch.sharding == split
            assert len(batch.addressable_shards) == 8
            assert batch.addressable_shards[0].data.shape == (len(host) // 8, 2)
            np.testing.assert_array_equal(np.asarray(batch), host)
