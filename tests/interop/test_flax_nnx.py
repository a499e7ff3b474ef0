"""fnn optimizers training a Flax NNX model, and fnn initializers as NNX ``kernel_init``.

Two ways to train an NNX model with an fnn optimizer: ``nnx.Optimizer(model, tx,
wrt=nnx.Param)`` (stateful), and the functional loop on the arrays of ``nnx.split`` (fnn's
own ``tx.update`` + ``optimizers.apply_updates``). They must give the same numbers.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import init
import optimizers as opt

STEPS = 15


class Net(nnx.Module):
    """Linear → BatchNorm → ReLU → Linear: BatchNorm's running statistics are nnx.BatchStat,
    state that must not be given to the optimizer (wrt=nnx.Param)."""

    def __init__(self, rngs):
        self.l1 = nnx.Linear(8, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.bn(self.l1(x))))


def data():
    kx, ky = jax.random.split(jax.random.key(1))
    return (jax.random.normal(kx, (32, 8), jnp.float32),
            jax.random.normal(ky, (32, 3), jnp.float32))


def is_kernel(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


OPTIMIZERS = {
    "adam": lambda: opt.adam(0.01),
    "clip_masked_adamw": lambda: opt.skip_nonfinite(opt.chain(
        opt.clip_by_global_norm(0.5), opt.adamw(0.01, weight_decay=0.1, mask=is_kernel))),
}


def pure(tree):
    """The plain arrays of an NNX state, copied to NumPy (the model's variables are updated in
    place)."""
    return jax.tree.map(np.array, nnx.as_pure(tree))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_nnx_optimizer_equals_the_functional_fnn_loop(name):
    x, y = data()
    tx = OPTIMIZERS[name]()
    model = Net(nnx.Rngs(0))
    graphdef, params0, stats0 = nnx.split(model, nnx.Param, nnx.BatchStat)
    params0, stats0 = pure(params0), pure(stats0)

    # (1) nnx.Optimizer: tx.update sees only the nnx.Param arrays
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)

    for _ in range(STEPS):
        nnx_step(model, optimizer)

    # (2) fnn's loop on the split arrays, merged back for each forward pass
    def loss(params, stats):
        m = nnx.merge(graphdef, params, stats)
        value = jnp.mean((m(x) - y) ** 2)
        return value, nnx.as_pure(nnx.state(m, nnx.BatchStat))

    @jax.jit
    def own_step(params, stats, opt_state):
        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params, stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return opt.apply_updates(params, updates), stats, opt_state, value

    params, stats, opt_state = params0, stats0, tx.init(params0)
    losses = []
    for _ in range(STEPS):
        params, stats, opt_state, value = own_step(params, stats, opt_state)
        losses.append(float(value))
    assert losses[-1] < 0.8 * losses[0], "training did not train"

    trained = pure(nnx.state(model, nnx.Param))
    for got, want in ((trained, params), (pure(nnx.state(model, nnx.BatchStat)), stats),
                      (pure(optimizer.opt_state), opt_state)):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the running statistics moved (BatchNorm trained) and were not stepped by the optimizer
    assert not np.allclose(np.asarray(stats["bn"]["mean"]), 0.0)
    assert int(optimizer.step[...]) == STEPS
    # the fnn state type survives nnx.Optimizer's wrapping
    assert type(optimizer.opt_state).__name__ == type(opt_state).__name__


def test_fnn_initializers_as_nnx_kernel_init():
    """nnx.Linear calls kernel_init(key, (in, out), param_dtype): fnn's draw for that key,
    with Xavier-uniform's variance 2 / (n_in + n_out) and bound √(6 / (n_in + n_out))."""
    calls = []

    def recorded(key, shape, dtype=jnp.float32):
        calls.append((key, shape, dtype))
        return init.xavier_uniform()(key, shape, dtype)

    layer = nnx.Linear(300, 200, kernel_init=recorded, bias_init=init.constant(0.5),
                       rngs=nnx.Rngs(0))
    (key, shape, dtype), = calls
    assert tuple(shape) == (300, 200) and jnp.dtype(dtype) == jnp.float32
    kernel = np.asarray(layer.kernel[...], np.float64)
    np.testing.assert_array_equal(kernel, np.asarray(init.xavier_uniform()(key, shape, dtype)))
    np.testing.assert_array_equal(np.asarray(layer.bias[...]), np.full(200, 0.5, np.float32))
    bound = math.sqrt(6 / 500)
    assert np.abs(kernel).max() <= bound * (1 + 1e-6)
    # uniform: variance bound²/3, relative standard error of the sample variance √(4/5 / n)
    assert abs(kernel.var() / (bound**2 / 3) - 1) < 6 * math.sqrt(0.8 / kernel.size)

    # and plain (not recorded) in a model, with He normal's variance 2 / n_in
    he = nnx.Linear(500, 400, kernel_init=init.he_normal(), rngs=nnx.Rngs(1))
    kernel = np.asarray(he.kernel[...], np.float64)
    assert abs(kernel.var() / (2 / 500) - 1) < 6 * math.sqrt(2 / kernel.size)
