"""partition and freeze: per-group optimizers, freezing, group hyperparameters by label.

References are float64 NumPy written from the formulas (sgd: p − η g; momentum:
v ← μ v + g, p − η v; Adam: DESIGN.md's update), and optax.multi_transform.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers as opt
from optimizers import _fused


def model(dtype=jnp.float64):
    rng = np.random.default_rng(0)
    params = {
        "backbone": {"w": rng.normal(size=(4, 3)), "b": np.array([0.5, -0.0, 0.0])},
        "head": {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)},
    }
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)


def grads_at(params, step):
    """Gradients that change from step to step (a quadratic loss, shifted)."""
    return jax.tree_util.tree_map(lambda p: 2.0 * p + 0.1 * (step + 1), params)


LABELS = {"backbone": "backbone", "head": "head"}


def bits(x):
    x = np.asarray(x)
    return x.view({8: np.uint64, 4: np.uint32, 2: np.uint16}[x.dtype.itemsize])


def numpy_adam(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps), m, v


@pytest.mark.parametrize("jit", [False, True])
def test_freezing_leaves_params_and_state_bit_identical(jit):
    params = model()
    tx = opt.partition({"backbone": opt.freeze(), "head": opt.adam(0.1)}, LABELS)
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    p = params
    ref = {k: np.asarray(v, np.float64) for k, v in params["head"].items()}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v = {k: np.zeros_like(x) for k, x in ref.items()}
    for t in range(1, 6):
        g = grads_at(p, t)
        updates, state = update(g, state, p)
        p = opt.apply_updates(p, updates)
        for k in ref:
            ref[k], m[k], v[k] = numpy_adam(ref[k], 2.0 * ref[k] + 0.1 * (t + 1), m[k], v[k], t, 0.1)
    for k in ("w", "b"):  # bit for bit, the −0.0 in the bias included
        np.testing.assert_array_equal(bits(p["backbone"][k]), bits(params["backbone"][k]))
    assert np.signbit(np.asarray(p["backbone"]["b"])[1])
    for k in ref:
        np.testing.assert_allclose(p["head"][k], ref[k], rtol=1e-12, atol=1e-14)
    # the frozen group keeps no state; the head's Adam keeps moments for the head only
    assert state.groups["backbone"] == opt.FreezeState()
    assert jax.tree_util.tree_leaves(state.groups["backbone"]) == []
    mu = state.groups["head"].mu
    assert [a.shape for a in jax.tree_util.tree_leaves(mu)] == [(2,), (3, 2)]
    np.testing.assert_allclose(mu["head"]["w"], m["w"], rtol=1e-12)
    assert int(state.groups["head"].count) == 5


def test_per_group_learning_rates_over_several_steps():
    params = model()
    tx = opt.partition({"backbone": opt.sgd(1e-4), "head": opt.momentum(1e-2, 0.9)}, LABELS)
    state = tx.init(params)
    p = params
    ref = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
    velocity = {k: np.zeros_like(x) for k, x in ref["head"].items()}
    for t in range(4):
        updates, state = tx.update(grads_at(p, t), state, p)
        p = opt.apply_updates(p, updates)
        for k in ("w", "b"):
            ref["backbone"][k] = ref["backbone"][k] - 1e-4 * (2 * ref["backbone"][k] + 0.1 * (t + 1))
            velocity[k] = 0.9 * velocity[k] + 2 * ref["head"][k] + 0.1 * (t + 1)
            ref["head"][k] = ref["head"][k] - 1e-2 * velocity[k]
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def _path_label(path, leaf):
    return "head" if "head" in jax.tree_util.keystr(path) else "backbone"


@pytest.mark.parametrize("labels", [
    {"backbone": "backbone", "head": "head"},  # a prefix: one label per subtree
    {"backbone": {"w": "backbone", "b": "backbone"}, "head": {"w": "head", "b": "head"}},
    _path_label,  # (path, leaf) -> label
    lambda params: {k: k for k in params},  # params -> labels tree
], ids=["prefix", "full tree", "path function", "params function"])
def test_every_form_of_labels_gives_the_same_groups(labels):
    params = model()
    tx = opt.partition({"backbone": opt.sgd(0.5), "head": opt.sgd(2.0)}, labels)
    updates, _ = tx.update(grads_at(params, 0), tx.init(params), params)
    for name, lr in (("backbone", 0.5), ("head", 2.0)):
        for k in ("w", "b"):
            expected = -lr * (2 * np.asarray(params[name][k]) + 0.1)
            np.testing.assert_allclose(updates[name][k], expected, rtol=1e-14)


def test_matches_optax_multi_transform_with_a_chain_inside():
    params = model()
    make = {"ours": lambda: opt.partition(
        {"backbone": opt.chain(opt.clip(0.5), opt.sgd(0.1)), "head": opt.adam(0.05)}, LABELS),
        "optax": lambda: optax.multi_transform(
        {"backbone": optax.chain(optax.clip(0.5), optax.sgd(0.1)), "head": optax.adam(0.05)},
        LABELS)}
    results = {}
    for name, build in make.items():
        tx, p = build(), params
        state = tx.init(p)
        for t in range(3):
            updates, state = tx.update(grads_at(p, t), state, p)
            p = optax.apply_updates(p, updates)
        results[name] = p
    for a, b in zip(jax.tree_util.tree_leaves(results["ours"]),
                    jax.tree_util.tree_leaves(results["optax"])):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_group_hyperparameters_by_label():
    params = model()
    tx = opt.partition({"backbone": opt.sgd(1e-4), "head": opt.adam(1e-2)}, LABELS)
    state = tx.init(params)
    assert float(opt.hyperparams(state, "head")["learning_rate"]) == 1e-2
    assert float(opt.hyperparams(state, "backbone")["learning_rate"]) == 1e-4
    assert float(opt.hyperparams(state)["b2"]) == 0.999  # owned by one group only
    with pytest.raises(KeyError, match="several links.*'backbone',.*'head',.*pass link="):
        opt.hyperparams(state)["learning_rate"]
    with pytest.raises(ValueError, match="several links"):
        opt.set_hyperparams(state, learning_rate=0.1)
    state = opt.set_hyperparams(state, "backbone", learning_rate=0.5)
    assert float(opt.hyperparams(state, "backbone")["learning_rate"]) == 0.5
    assert float(opt.hyperparams(state, "head")["learning_rate"]) == 1e-2
    # the set value is the one the next step uses (sgd: −η g), and it survives the step
    g = grads_at(params, 0)
    updates, state = jax.jit(tx.update)(g, state, params)
    np.testing.assert_allclose(updates["backbone"]["w"], -0.5 * np.asarray(g["backbone"]["w"]),
                               rtol=1e-14)
    assert float(opt.hyperparams(state, "backbone")["learning_rate"]) == 0.5
    with pytest.raises(ValueError, match=r"'tail' is not one of its groups"):
        opt.hyperparams(state, "tail")


def test_group_hyperparameters_inside_a_chain_and_wrappers():
    params = model()
    tx = opt.skip_nonfinite(opt.chain(
        opt.clip_by_global_norm(10.0),
        opt.partition({"backbone": opt.freeze(), "head": opt.sgd(0.1)}, LABELS)))
    state = tx.init(params)
    state = opt.set_hyperparams(state, (1, "head"), learning_rate=0.25)
    assert float(opt.hyperparams(state, (1, "head"))["learning_rate"]) == 0.25
    assert float(opt.hyperparams(state)["learning_rate"]) == 0.25  # the only owner
    with pytest.raises(ValueError, match=re.escape("The group 'head' is at link=(1, 'head')")):
        opt.set_hyperparams(state, "head", learning_rate=0.1)
    g = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.01), params)  # norm < 10: no clip
    updates, _ = tx.update(g, state, params)
    np.testing.assert_allclose(updates["head"]["w"], -0.25 * 0.01 * np.ones((3, 2)), rtol=1e-14)
    assert not np.any(np.asarray(updates["backbone"]["w"]))


def test_vmap_over_a_groups_learning_rate():
    params = model()
    tx = opt.partition({"backbone": opt.sgd(0.0), "head": opt.sgd(1.0)}, LABELS)
    rates = jnp.asarray([0.1, 0.2, 0.4])
    states = jax.vmap(lambda lr: opt.set_hyperparams(tx.init(params), "head",
                                                     learning_rate=lr))(rates)
    g = grads_at(params, 0)
    updates, _ = jax.vmap(lambda s: tx.update(g, s, params))(states)
    for i, lr in enumerate([0.1, 0.2, 0.4]):
        np.testing.assert_allclose(updates["head"]["b"][i], -lr * np.asarray(g["head"]["b"]),
                                   rtol=1e-14)
        assert not np.any(np.asarray(updates["backbone"]["b"][i]))


def test_none_leaves_and_nesting_inside_masked():
    params = {"a": None, "backbone": jnp.linspace(1.0, 2.0, 3),
              "head": {"w": jnp.ones((2, 2)), "z": jnp.full(2, 3.0)}}
    grads = jax.tree_util.tree_map(lambda x: 0.5 * x, params)
    labels = {"a": "frozen", "backbone": "frozen", "head": "train"}  # for the user's params
    inner = opt.partition({"frozen": opt.freeze(), "train": opt.sgd(0.1)}, labels)
    tx = opt.masked(inner, {"a": True, "backbone": True, "head": {"w": True, "z": False}})
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    assert updates["a"] is None
    np.testing.assert_allclose(updates["head"]["w"], -0.05 * np.ones((2, 2)), rtol=1e-14)
    assert not np.any(np.asarray(updates["head"]["z"]))  # masked out of an optimizer: frozen
    assert not np.any(np.asarray(updates["backbone"]))
    # a mask written for the user's params, inside a group
    decay = opt.masked(opt.add_decayed_weights(1.0), {"a": False, "backbone": False,
                                                      "head": {"w": True, "z": False}})
    tx = opt.partition({"frozen": opt.freeze(), "train": opt.chain(decay, opt.sgd(0.1))}, labels)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["head"]["w"], -0.1 * 1.5 * np.ones((2, 2)), rtol=1e-14)
    np.testing.assert_allclose(updates["head"]["z"], -0.1 * 1.5 * np.ones(2), rtol=1e-14)
    assert updates["a"] is None


def test_packed_params_with_a_group_per_label():
    params = model()
    tx = opt.partition({"backbone": opt.freeze(), "head": opt.adam(0.1)}, _path_label)
    packed = opt.pack(params, group=_path_label)  # the labels function is the group function
    state = tx.init(packed)
    p, plain = packed, params
    plain_state = tx.init(params)
    for t in range(3):
        g = grads_at(opt.unpack(p), t)
        updates, state = tx.update(opt.pack(g, group=_path_label), state, p)
        p = opt.apply_updates(p, updates)
        updates, plain_state = tx.update(grads_at(plain, t), plain_state, plain)
        plain = opt.apply_updates(plain, updates)
    unpacked = opt.unpack(p)
    for a, b in zip(jax.tree_util.tree_leaves(unpacked), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    for k in ("w", "b"):
        np.testing.assert_array_equal(bits(unpacked["backbone"][k]), bits(params["backbone"][k]))
    with pytest.raises(ValueError, match="packed buffer 'float64' holds leaves of groups "
                                         r"\['backbone', 'head'\].*pack\(params, group="):
        tx.init(opt.pack(params))


def test_each_group_runs_its_own_one_pass_kernel():
    """A frozen large leaf runs no kernel; the head's Adam runs one, with the right numbers."""
    if not _fused.available():
        pytest.fail("the one-pass kernels do not build on this machine")
    n = _fused.CHUNK + 5
    rng = np.random.default_rng(1)
    params = {"backbone": jnp.asarray(rng.normal(size=n), jnp.float32),
              "head": jnp.asarray(rng.normal(size=n), jnp.float32)}
    grads = {k: jnp.asarray(rng.normal(size=n), jnp.float32) for k in params}
    tx = opt.partition({"backbone": opt.freeze(), "head": opt.adam(1e-2)}, LABELS)

    def step(p, s):
        return opt.step(tx, grads, s, p)

    state = tx.init(params)
    assert jax.jit(step).lower(params, state).as_text().count("fnn_adam_multi_f32") >= 1
    new, state = jax.jit(step)(params, state)
    expected, _, _ = numpy_adam(np.asarray(params["head"], np.float64),
                                np.asarray(grads["head"], np.float64), 0.0, 0.0, 1,
                                float(np.float32(1e-2)), float(np.float32(0.9)),
                                float(np.float32(0.999)), float(np.float32(1e-8)))
    np.testing.assert_allclose(new["head"], expected, rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(bits(new["backbone"]), bits(params["backbone"]))


def test_state_must_come_from_this_partition():
    params = model()
    tx = opt.partition({"backbone": opt.freeze(), "head": opt.sgd(0.1)}, LABELS)
    other = opt.partition({"body": opt.freeze(), "head": opt.sgd(0.1)},
                          {"backbone": "body", "head": "head"})
    with pytest.raises(TypeError, match=r"PartitionState of groups \['backbone', 'head'\].*"
                                        r"with groups \['body', 'head'\]"):
        tx.update(grads_at(params, 0), other.init(params), params)
    with pytest.raises(TypeError, match="freeze.update: state must be the FreezeState"):
        opt.freeze().update(params, opt.sgd(0.1).init(params))


def test_masked_leaves_of_an_optimizer_stay_bit_identical_too():
    """masked's zero update is −0.0 as well: p + 0.0 would turn a −0.0 param into +0.0."""
    params = model()
    tx = opt.masked(opt.adam(0.1), {"backbone": False, "head": True})
    updates, _ = tx.update(grads_at(params, 0), tx.init(params), params)
    new = opt.apply_updates(params, updates)
    np.testing.assert_array_equal(bits(new["backbone"]["b"]), bits(params["backbone"]["b"]))


def test_labels_changed_since_init_name_the_group():
    params = model()
    state = opt.partition({"backbone": opt.freeze(), "head": opt.adam(0.1)}, LABELS).init(params)
    moved = opt.partition({"backbone": opt.freeze(), "head": opt.adam(0.1)},
                          {"backbone": "head", "head": "head"})
    with pytest.raises(ValueError, match="(?s)partition.update: group 'head': adam.update: the "
                                         "structure of grads does not match.*tx.init"):
        moved.update(grads_at(params, 0), state, params)
