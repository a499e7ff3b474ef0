"""masked and per-leaf masks: None leaves, nesting, callable pytrees, never an ascent.

References are closed forms (sgd: −η g; Adam's first step: −η sign(g); L2 decay:
g + λ p) and optax.masked, which the gradient-transform case must match.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers as opt

ALL_TRUE = lambda tree: jax.tree_util.tree_map(lambda _: True, tree)  # noqa: E731
IS_MATRIX = lambda tree: jax.tree_util.tree_map(lambda x: x.ndim > 1, tree)  # noqa: E731


def params_with_none():
    return {"a": None, "b": jnp.ones(2), "c": jnp.ones(3)}


def assert_trees_close(actual, expected, rtol=1e-6):
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
        assert np.shape(a) == np.shape(e)
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64),
                                   rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("jit", [False, True])
def test_none_leaves_keep_every_update_in_place(jit):
    """The issue's case: b's update went to c and b got None."""
    grads = params_with_none()
    tx = opt.masked(opt.sgd(1.0), ALL_TRUE)
    update = jax.jit(tx.update) if jit else tx.update
    updates, _ = update(grads, tx.init(grads), grads)
    assert updates["a"] is None
    np.testing.assert_array_equal(updates["b"], -np.ones(2))
    np.testing.assert_array_equal(updates["c"], -np.ones(3))


def test_none_leaves_with_a_partial_mask_and_a_stateful_optimizer():
    params = {"a": None, "b": jnp.ones(2), "c": jnp.full(3, 2.0), "d": jnp.ones((2, 2))}
    grads = {"a": None, "b": jnp.full(2, -0.5), "c": jnp.full(3, 3.0), "d": jnp.ones((2, 2))}
    tx = opt.masked(opt.adam(0.1), {"a": True, "b": False, "c": True, "d": False})
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    assert updates["a"] is None
    np.testing.assert_allclose(updates["c"], -0.1 * np.ones(3), rtol=1e-5)  # −η sign(g)
    np.testing.assert_array_equal(updates["b"], np.zeros(2))  # frozen, see below
    np.testing.assert_array_equal(updates["d"], np.zeros((2, 2)))


def nested_tree():
    params = {"a": None, "b": jnp.linspace(1.0, 2.0, 2),
              "c": {"w": jnp.linspace(-1.0, 1.0, 4).reshape(2, 2), "z": jnp.ones(3)}}
    grads = jax.tree_util.tree_map(lambda x: 0.5 * x + 0.25, params)
    return params, grads


OUTER = {"a": True, "b": False, "c": True}  # a prefix: one bool for the subtree c
INNER_TREE = {"a": False, "b": True, "c": {"w": True, "z": False}}  # written for the user's params


@pytest.mark.parametrize("inner", [INNER_TREE, IS_MATRIX], ids=["tree", "function"])
def test_nested_masks_of_a_gradient_transform_match_optax(inner):
    """optax issue #271: a mask written for the user's params fits the nested wrapper."""
    params, grads = nested_tree()
    ours = opt.masked(opt.masked(opt.add_decayed_weights(0.5), inner), OUTER)
    theirs = optax.masked(optax.masked(optax.add_decayed_weights(0.5), inner), OUTER)
    updates, _ = ours.update(grads, ours.init(params), params)
    expected, _ = theirs.update(grads, theirs.init(params), params)
    assert_trees_close(updates, expected)
    # and the closed form: decay only on c.w (selected by both masks), g elsewhere
    np.testing.assert_allclose(updates["c"]["w"], grads["c"]["w"] + 0.5 * params["c"]["w"])
    np.testing.assert_allclose(updates["c"]["z"], grads["c"]["z"])
    np.testing.assert_allclose(updates["b"], grads["b"])


@pytest.mark.parametrize("inner", [INNER_TREE, IS_MATRIX], ids=["tree", "function"])
def test_nested_masks_of_an_optimizer(inner):
    params, grads = nested_tree()
    tx = opt.masked(opt.masked(opt.sgd(0.1), inner), OUTER)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    np.testing.assert_allclose(updates["c"]["w"], -0.1 * grads["c"]["w"], rtol=1e-6)
    for leaf in (updates["b"], updates["c"]["z"]):
        np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
    assert updates["a"] is None


def test_adamw_mask_written_for_the_users_params_fits_inside_masked():
    params, grads = nested_tree()
    decay = {"a": True, "b": True, "c": {"w": True, "z": False}}
    tx = opt.masked(opt.adamw(0.1, weight_decay=0.5, mask=decay), OUTER)
    updates, _ = tx.update(grads, tx.init(params), params)
    w = np.asarray(params["c"]["w"], np.float64)
    np.testing.assert_allclose(updates["c"]["w"], -0.1 * (np.sign(grads["c"]["w"]) + 0.5 * w),
                               rtol=1e-5)
    np.testing.assert_allclose(updates["c"]["z"], -0.1 * np.sign(grads["c"]["z"]), rtol=1e-5)


def test_a_mask_is_a_prefix_of_the_params():
    params, grads = nested_tree()
    tx = opt.add_decayed_weights(1.0, mask={"a": False, "b": False, "c": True})
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["c"]["z"], grads["c"]["z"] + params["c"]["z"])
    np.testing.assert_allclose(updates["b"], grads["b"])


@jax.tree_util.register_pytree_node_class
class BoolModule:
    """Like an Equinox module holding bools: a pytree that is also callable."""

    def __init__(self, w, b):
        self.w, self.b = w, b

    def __call__(self, *args):
        raise AssertionError("a pytree of bools must be used as a tree, not called")

    def tree_flatten(self):
        return (self.w, self.b), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(*children)


def test_a_callable_pytree_of_bools_is_a_tree():
    params = BoolModule(jnp.ones((2, 2)), jnp.ones(2))
    grads = BoolModule(jnp.full((2, 2), 2.0), jnp.full(2, 2.0))
    tx = opt.masked(opt.add_decayed_weights(0.5), BoolModule(True, False))
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates.w, 2.5 * np.ones((2, 2)))
    np.testing.assert_allclose(updates.b, 2.0 * np.ones(2))
    adamw = opt.adamw(0.1, weight_decay=1.0, mask=BoolModule(False, True))
    updates, _ = adamw.update(grads, adamw.init(params), params)
    np.testing.assert_allclose(updates.w, -0.1 * np.ones((2, 2)), rtol=1e-5)
    np.testing.assert_allclose(updates.b, -0.1 * 2 * np.ones(2), rtol=1e-5)


@pytest.mark.parametrize("make", [lambda: opt.adam(0.1), lambda: opt.sgd(0.1),
                                  lambda: opt.chain(opt.add_decayed_weights(0.1), opt.sgd(0.1)),
                                  lambda: opt.skip_nonfinite(opt.momentum(0.1))],
                         ids=["adam", "sgd", "chain", "wrapped"])
def test_masking_an_optimizer_never_ascends(make):
    """Pass-through would make apply_updates do p + g on the frozen leaves: ascent, rate 1."""
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)  # noqa: E731
    tx = opt.masked(make(), IS_MATRIX)
    state = tx.init(params)
    p = params
    for _ in range(5):
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        p = opt.apply_updates(p, updates)
    np.testing.assert_array_equal(p["b"], params["b"])  # frozen
    assert float(loss(p)) < float(loss(params))


@pytest.mark.parametrize("make_ours, make_theirs", [
    (lambda: opt.clip(0.5), lambda: optax.clip(0.5)),
    (lambda: opt.add_decayed_weights(0.3), lambda: optax.add_decayed_weights(0.3)),
    (lambda: opt.clip_by_global_norm(0.1), lambda: optax.clip_by_global_norm(0.1)),
], ids=["clip", "decay", "global_norm"])
def test_masking_a_gradient_transform_passes_gradients_like_optax(make_ours, make_theirs):
    params = {"a": None, "w": jnp.linspace(-2, 2, 6).reshape(2, 3), "b": jnp.linspace(1, 3, 3)}
    grads = {"a": None, "w": jnp.linspace(-3, 3, 6).reshape(2, 3), "b": jnp.linspace(2, -2, 3)}
    mask = {"a": True, "w": True, "b": False}
    ours, theirs = opt.masked(make_ours(), mask), optax.masked(make_theirs(), mask)
    updates, _ = ours.update(grads, ours.init(params), params)
    expected, _ = theirs.update(grads, theirs.init(params), params)
    assert_trees_close(updates, expected)
    np.testing.assert_array_equal(updates["b"], grads["b"])


def test_packed_params_with_a_prefix_mask():
    params = {"w": jnp.ones((2, 3)), "b": jnp.full(3, 2.0)}
    packed = opt.pack(params, group=lambda path, leaf: leaf.ndim >= 2)
    grads = jax.tree_util.tree_map(jnp.ones_like, packed)
    tx = opt.chain(opt.add_decayed_weights(0.5, mask=IS_MATRIX), opt.sgd(1.0))
    updates = opt.unpack(tx.update(grads, tx.init(packed), packed)[0])
    np.testing.assert_allclose(updates["w"], -1.5 * np.ones((2, 3)))
    np.testing.assert_allclose(updates["b"], -np.ones(3))
    frozen = opt.masked(opt.sgd(1.0), {"w": False, "b": True})
    updates = opt.unpack(frozen.update(grads, frozen.init(packed), packed)[0])
    np.testing.assert_array_equal(updates["w"], np.zeros((2, 3)))
    np.testing.assert_allclose(updates["b"], -np.ones(3))


def test_masked_state_checkpoints_with_placeholders(tmp_path):
    from flax import serialization

    params, grads = nested_tree()
    tx = opt.masked(opt.adam(0.1), OUTER)
    state = tx.update(grads, tx.init(params), params)[1]
    restored = serialization.from_bytes(tx.init(params), serialization.to_bytes(state))
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(a, b)
