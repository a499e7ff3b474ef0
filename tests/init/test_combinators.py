"""scaled and tree_init: initializers compose, and whole pytrees come from one key."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import init

KEY = jax.random.key(0)


def test_scaled_multiplies_the_draw():
    base = init.uniform(-1.0, 1.0)
    for factor in (0.1, -3.0, 0.0):
        np.testing.assert_allclose(init.scaled(base, factor)(KEY, (100,), jnp.float64),
                                   factor * np.asarray(base(KEY, (100,), jnp.float64)), rtol=1e-15)
    w = init.scaled(init.xavier_normal(), 0.5)(KEY, (4, 4), jnp.bfloat16)
    assert w.dtype == jnp.bfloat16
    # nests: factors multiply
    nested = init.scaled(init.scaled(base, 2.0), 0.25)(KEY, (10,), jnp.float64)
    np.testing.assert_allclose(nested, 0.5 * np.asarray(base(KEY, (10,), jnp.float64)),
                               rtol=1e-15)


def test_scaled_factor_may_be_traced():
    f = jax.jit(lambda key, c: init.scaled(init.ones(), c)(key, (3,)))
    np.testing.assert_allclose(f(KEY, 2.5), np.full(3, 2.5))


SHAPES = {"dense": {"w": (300, 200), "b": (200,)}, "out": {"w": (200, 10), "b": (10,)}}


def test_by_ndim_gives_weights_and_biases_their_own_initializers():
    params = init.tree_init(KEY, SHAPES, init.by_ndim(init.he_normal(), init.constant(0.5)),
                            dtype=jnp.float64)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        {"dense": {"w": 0, "b": 0}, "out": {"w": 0, "b": 0}})
    np.testing.assert_array_equal(params["dense"]["b"], np.full(200, 0.5))
    np.testing.assert_array_equal(params["out"]["b"], np.full(10, 0.5))
    w = np.asarray(params["dense"]["w"])
    assert w.shape == (300, 200) and w.dtype == np.float64
    variance = 2 / 300
    assert abs(w.var() - variance) < 6 * variance * math.sqrt(2 / w.size)


def test_by_path_and_a_raw_rule():
    seen = []

    def choose(path, shape):
        seen.append((path, shape))
        return init.zeros() if path.endswith("['b']") else init.ones()

    params = init.tree_init(KEY, SHAPES, init.by_path(choose))
    np.testing.assert_array_equal(params["dense"]["w"], np.ones((300, 200)))
    np.testing.assert_array_equal(params["out"]["b"], np.zeros(10))
    assert sorted(seen) == [("['dense']['b']", (200,)), ("['dense']['w']", (300, 200)),
                            ("['out']['b']", (10,)), ("['out']['w']", (200, 10))]
    # a Rule made directly sees the key path itself
    rule = init.Rule(lambda path, shape: init.constant(float(path[-1].idx)))
    stacked = init.tree_init(KEY, [(2,), (3,), (1,)], rule)
    assert [float(x[0]) for x in stacked] == [0.0, 1.0, 2.0]


def test_leaf_values_depend_only_on_the_key_and_the_leaf_path():
    rule = init.by_ndim(init.xavier_uniform(), init.normal(1.0))
    base = init.tree_init(KEY, SHAPES, rule)
    more = init.tree_init(KEY, {**SHAPES, "extra": {"w": (5, 5)}}, rule)
    reordered = init.tree_init(KEY, {"out": SHAPES["out"], "dense": SHAPES["dense"]}, rule)
    for tree in (more, reordered):
        for layer in ("dense", "out"):
            for leaf in ("w", "b"):
                np.testing.assert_array_equal(tree[layer][leaf], base[layer][leaf])
    again = init.tree_init(KEY, SHAPES, rule)
    np.testing.assert_array_equal(again["out"]["w"], base["out"]["w"])
    other = init.tree_init(jax.random.key(1), SHAPES, rule)
    assert not np.array_equal(other["out"]["w"], base["out"]["w"])


def test_leaves_of_the_same_shape_are_independent():
    layers = init.tree_init(KEY, [(400, 400)] * 3, init.normal(1.0), dtype=jnp.float64)
    n = 400 * 400
    for i in range(3):
        for j in range(i + 1, 3):
            a, b = np.asarray(layers[i]).ravel(), np.asarray(layers[j]).ravel()
            assert abs(np.corrcoef(a, b)[0, 1]) < 6 / math.sqrt(n)


class Layer(NamedTuple):
    w: object
    b: object


def test_containers_structs_and_dtypes():
    shapes = {
        "stack": [Layer((4, 3), (3,)), Layer((3, 2), (2,))],
        "scalar": (),
        "struct": jax.ShapeDtypeStruct((2, 5), jnp.bfloat16),
        "like": jnp.zeros((6,), jnp.float16),
    }
    params = init.tree_init(KEY, shapes, init.by_ndim(init.lecun_normal(), init.ones()))
    assert isinstance(params["stack"][1], Layer) and params["stack"][1].w.shape == (3, 2)
    assert params["scalar"].shape == () and params["scalar"].dtype == jnp.float32
    assert params["struct"].dtype == jnp.bfloat16 and params["struct"].shape == (2, 5)
    assert params["like"].dtype == jnp.float16
    forced = init.tree_init(KEY, shapes, init.ones(), dtype=jnp.float64)
    assert all(x.dtype == jnp.float64 for x in jax.tree_util.tree_leaves(forced))


def test_shapes_from_eval_shape():
    def make(key):
        return {"w": jnp.zeros((8, 4)), "b": jnp.zeros((4,))}

    abstract = jax.eval_shape(make, KEY)
    params = init.tree_init(KEY, abstract, init.by_ndim(init.orthogonal(), init.zeros()))
    w = np.asarray(params["w"], np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(4), atol=1e-5)


def test_tree_init_under_jit_and_vmap():
    rule = init.by_ndim(init.xavier_uniform(), init.normal(1.0))
    eager = init.tree_init(KEY, SHAPES, rule)
    jitted = jax.jit(lambda k: init.tree_init(k, SHAPES, rule))(KEY)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    keys = jax.random.split(KEY, 3)
    batch = jax.vmap(lambda k: init.tree_init(k, SHAPES, rule))(keys)
    assert batch["dense"]["w"].shape == (3, 300, 200)
    np.testing.assert_allclose(batch["out"]["b"][1], init.tree_init(keys[1], SHAPES, rule)["out"]["b"],
                               rtol=1e-6)
    assert not np.array_equal(batch["out"]["b"][0], batch["out"]["b"][1])
