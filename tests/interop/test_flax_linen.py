"""fnn optimizers as the ``tx`` of a Flax ``TrainState``, and fnn initializers as linen ``kernel_init``.

The reference for every training run is fnn's own loop, ``tx.update`` followed by
``optimizers.apply_updates``, jitted, on the same params and gradients; the Flax side is
``TrainState.apply_gradients`` (``tx.update`` then ``optax.apply_updates``).
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.training import train_state

import init
import optimizers as opt

STEPS = 25


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Dense(16, param_dtype=jnp.float32)(x))
        return nn.Dense(3, param_dtype=jnp.float32)(x)


@functools.cache
def problem():
    """(params, loss) of a small regression with a linen MLP; built once (eager operations
    compile one by one, so the set-up is jitted and the data is NumPy)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 8)).astype(np.float32)
    y = rng.normal(size=(32, 3)).astype(np.float32)
    model = MLP()
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]

    def loss(params):
        return jnp.mean((model.apply({"params": params}, x) - y) ** 2)

    return params, loss


def is_kernel(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


OPTIMIZERS = {
    "adam": lambda: opt.adam(0.01),
    "nesterov": lambda: opt.momentum(0.05, momentum=0.9, nesterov=True),
    "adagrad": lambda: opt.adagrad(0.05),
    # clipping that acts (the first gradients' norm is above 0.5), coupled decay on kernels only,
    # AdamW decaying kernels only, NaN skipping around the chain
    "clip_masks_adamw": lambda: opt.skip_nonfinite(opt.chain(
        opt.clip_by_global_norm(0.5), opt.masked(opt.add_decayed_weights(1e-2), is_kernel),
        opt.adamw(0.01, weight_decay=0.1, mask=is_kernel))),
    "frozen_biases": lambda: opt.masked(opt.momentum(0.05), is_kernel),
}


def run_both(tx, params, grad_fn, steps=STEPS, fast=False):
    """(TrainState after ``steps`` apply_gradients, fnn loop's (params, opt_state), the jitted
    program): ``grad_fn(params, i)`` gives step i's gradient. Both runs are in one program (one
    compilation), each a ``fori_loop`` of its own steps. fnn's loop is ``update`` +
    ``apply_updates``, or ``optimizers.step`` (the one-pass kernels) if ``fast``."""
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
    state = state.replace(step=jnp.zeros((), jnp.int32))  # create's int 0 as a loop carry

    @jax.jit
    def both(state, ours):
        def flax_step(i, state):
            return state.apply_gradients(grads=grad_fn(state.params, i))

        def own_step(i, ours):
            params, opt_state = ours
            if fast:
                return opt.step(tx, grad_fn(params, i), opt_state, params)
            updates, opt_state = tx.update(grad_fn(params, i), opt_state, params)
            return opt.apply_updates(params, updates), opt_state

        return (jax.lax.fori_loop(0, steps, flax_step, state),
                jax.lax.fori_loop(0, steps, own_step, ours))

    ours = (params, tx.init(params))
    state, ours = both(state, ours)
    return state, ours, lambda: both.lower(state, ours).as_text()


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_train_state_apply_gradients_equals_the_fnn_loop(name):
    params, loss = problem()
    tx = OPTIMIZERS[name]()
    state, (params_ours, opt_state_ours), _ = run_both(tx, params, lambda p, i: jax.grad(loss)(p))
    assert int(state.step) == STEPS
    before, after = jax.jit(lambda a, b: (loss(a), loss(b)))(params, state.params)
    assert float(after) < 0.8 * float(before), "training did not train"
    assert_trees_equal(state.params, params_ours)  # small leaves: the same XLA arithmetic
    assert_trees_equal(state.opt_state, opt_state_ours)  # NamedTuple types included
    if name == "frozen_biases":
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
            if jax.tree_util.keystr(path).endswith("['bias']"):
                np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def test_hyperparams_of_a_train_state_change_without_recompiling():
    """Hyperparameters are data in the opt_state Flax carries: set_hyperparams on
    ``state.opt_state`` changes the rate, and the jitted step does not recompile."""
    params, loss = problem()
    tx = opt.sgd(0.1)
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
    state = state.replace(step=jnp.zeros((), jnp.int32))  # an array, as after a step
    step = jax.jit(lambda s: (s.apply_gradients(grads=jax.grad(loss)(s.params)),
                              jax.grad(loss)(s.params)))
    state, _ = step(state)
    slow = state.replace(opt_state=opt.set_hyperparams(state.opt_state, learning_rate=0.01))
    after, g = step(slow)
    assert step._cache_size() == 1
    assert float(opt.hyperparams(after.opt_state)["learning_rate"]) == pytest.approx(0.01)
    for p0, p1, gi in zip(jax.tree.leaves(slow.params), jax.tree.leaves(after.params),
                          jax.tree.leaves(g)):
        p0, gi = np.asarray(p0, np.float64), np.asarray(gi, np.float64)
        np.testing.assert_allclose(np.asarray(p1), p0 - 0.01 * gi, rtol=1e-6, atol=1e-7)


BIG = 1 << 16  # a large float32 leaf (every float32 leaf takes the one-pass kernels)

KERNELS = {
    "adam": (lambda: opt.adam(0.01), "fnn_adam_multi_f32"),
    "nesterov": (lambda: opt.momentum(0.01, nesterov=True), "fnn_momentum_multi_f32"),
    "adagrad": (lambda: opt.adagrad(0.05), "fnn_scaled_multi_f32"),  # RMSProp's kernel too
}


@pytest.mark.parametrize("name", list(KERNELS))
def test_one_pass_kernel_leaves_within_the_rounding_of_p_new_minus_p(name):
    """Flax adds the exact update with ``optax.apply_updates``; fnn's own loop
    (``optimizers.step``) takes the kernel's p_new itself: exact whenever the
    subtraction is (Sterbenz: p_new within a factor 2 of p), else one rounding of at most an
    ulp of max(|p|, |p_new|) per step. The gradients are a fixed sequence (not functions of
    the params) so the rounding differences add up instead of being amplified by the loss:
    after N steps the two runs differ by at most N ulps of the largest |p|."""
    make, target = KERNELS[name]
    tx = make()
    rng = np.random.default_rng(3)
    params = {"w": (rng.normal(size=(BIG // 256, 256)) * 0.05).astype(np.float32),
              "b": np.zeros(4, np.float32)}
    grads = jax.device_put({"w": rng.normal(size=(STEPS, BIG // 256, 256)).astype(np.float32),
                            "b": np.ones((STEPS, 4), np.float32)})
    state, (params_ours, opt_state_ours), hlo = run_both(
        tx, params, lambda p, i: jax.tree.map(lambda g: g[i], grads), fast=True)
    assert target in hlo(), "the kernel path was not taken"
    w_flax, w_ours = np.asarray(state.params["w"]), np.asarray(params_ours["w"])
    largest = max(np.abs(w_flax).max(), np.abs(w_ours).max(), np.abs(params["w"]).max())
    bound = STEPS * np.spacing(np.float32(largest))
    error = np.abs(w_flax - w_ours).max()
    assert error <= bound, f"{name}: max |Δp| {error:.3g} > {bound:.3g}"
    np.testing.assert_allclose(np.asarray(state.params["b"]), np.asarray(params_ours["b"]),
                               rtol=1e-6)
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(opt_state_ours)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)  # same gradients


# ----------------------------------------------------------------------------- kernel_init


class Recorder:
    """A kernel_init that records the arguments Flax passes, then calls the fnn initializer."""

    def __init__(self, initializer):
        self.initializer, self.calls = initializer, []

    def __call__(self, key, shape, dtype=jnp.float32):
        self.calls.append((key, shape, dtype))
        return self.initializer(key, shape, dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fnn_initializers_as_linen_kernel_init(dtype):
    """Flax calls kernel_init(key, shape, param_dtype): the kernel is exactly fnn's draw for
    that key, in that dtype; a Conv kernel (HWIO) has He variance 2 / (kh·kw·c_in)."""
    he = Recorder(init.he_normal())
    conv = nn.Conv(64, (3, 3), kernel_init=he, bias_init=init.constant(0.1), param_dtype=dtype)
    params = conv.init(jax.random.key(0), jnp.ones((1, 8, 8, 32), dtype))["params"]
    (key, shape, called_dtype), = he.calls
    assert tuple(shape) == (3, 3, 32, 64) and jnp.dtype(called_dtype) == jnp.dtype(dtype)
    assert params["kernel"].dtype == dtype
    np.testing.assert_array_equal(np.asarray(params["kernel"], np.float64),
                                  np.asarray(init.he_normal()(key, shape, dtype), np.float64))
    np.testing.assert_array_equal(np.asarray(params["bias"], np.float64), np.full(64, 0.1,
                                  dtype=np.dtype(dtype)).astype(np.float64))
    kernel = np.asarray(params["kernel"], np.float64)
    fan_in = 3 * 3 * 32
    # sample variance of n normal draws: relative standard error √(2/n); 6 of them
    assert abs(kernel.var() / (2 / fan_in) - 1) < 6 * math.sqrt(2 / kernel.size)
    assert abs(kernel.mean()) < 6 * math.sqrt(2 / fan_in / kernel.size)
