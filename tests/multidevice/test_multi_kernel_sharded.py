"""The multi-tensor kernels (optimizers/_multi.py) on 8 devices: sharded leaves stay sharded.

Under jax.jit with NamedSharding every leaf keeps its own sharding (custom_partitioning:
each device steps its local shards of all leaves in one call, nothing is gathered);
inside jax.shard_map the call steps each device's local blocks. Both are compared with
the same call on whole, unsharded arrays on one device.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optimizers import _fused, _multi

MESH_2D = jax.make_mesh((2, 4), ("x", "y"))
MESH_1D = jax.make_mesh((8,), ("d",))
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")

# shape, PartitionSpec on MESH_2D: sharded over one or both axes, replicated, scalar, empty,
# and one leaf whose local shard is larger than a kernel work chunk (65,536 elements).
LEAVES_2D = [((64, 40), P("x", "y")), ((80, 8), P(None, "y")), ((16,), P("y")),
             ((3, 5), P()), ((), P()), ((0,), P()), ((512, 300), P("x"))]
FLAGS = np.array([1, 1, 0, 1, 0, 1, 1], np.float32)


def arrays(shapes, seed, moments):
    rng = np.random.default_rng(seed)
    out = [[(rng.normal(size=s)).astype(np.float32) for s in shapes] for _ in range(2 + moments)]
    out[-1] = [np.abs(x) * 0.01 for x in out[-1]]  # v, s ≥ 0
    return out


def put(xs, specs, mesh=MESH_1D):
    """The arrays placed on ``mesh`` by their specs (the mesh's axes are Explicit: a shard_map's
    in_specs must match its arguments' shardings)."""
    return [jax.device_put(jnp.array(x), NamedSharding(mesh, s)) for x, s in zip(xs, specs)]


def spec_of(x):
    spec = list(x.sharding.spec)
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def strip(spec):
    spec = list(spec)
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


CASES = {
    "adamw": (_multi.adam_multi, "fnn_adam_multi_f32", 2,
              lambda: _fused.adam_coefficients(jnp.int32(3), 1e-2, 0.9, 0.999, 1e-8, 0.1)),
    "rmsprop": (_multi.scaled_multi, "fnn_scaled_multi_f32", 1,
                lambda: _fused.scaled_coefficients(0.9, 0.1, 1e-2, 1e-8, True)),
    "nesterov": (_multi.momentum_multi, "fnn_momentum_multi_f32", 1,
                 lambda: _fused.momentum_coefficients(0.9, 1e-2, True)),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_sharded_leaves_stay_sharded_under_jit(kind):
    fn, target, moments, make_coef = CASES[kind]
    shapes = [s for s, _ in LEAVES_2D]
    specs = [spec for _, spec in LEAVES_2D]
    lists = arrays(shapes, 1, moments)
    placed = [[jax.device_put(x, NamedSharding(MESH_2D, spec)) for x, spec in zip(xs, specs)]
              for xs in lists]
    coef = make_coef()
    step = jax.jit(fn)
    compiled = step.lower(coef, FLAGS, *placed).compile().as_text()
    entry = compiled[compiled.index("ENTRY"):]
    assert entry.count(f'custom_call_target="{target}"') == 1  # one call for all local shards
    assert not [c for c in COLLECTIVES if c in entry], [c for c in COLLECTIVES if c in entry]
    new = step(coef, FLAGS, *placed)
    one_device = [[jax.device_put(x, jax.devices()[0]) for x in xs] for xs in lists]
    alone = jax.jit(fn)(coef, FLAGS, *one_device)
    for k in range(1 + moments):
        for i, spec in enumerate(specs):
            assert spec_of(new[k][i]) == strip(spec), (kind, k, i, new[k][i].sharding)
            assert new[k][i].sharding.mesh == MESH_2D
            np.testing.assert_allclose(np.asarray(new[k][i]), np.asarray(alone[k][i]),
                                       rtol=2e-6, atol=1e-7)


def test_a_donated_sharded_call_is_in_place():
    shapes = [s for s, _ in LEAVES_2D]
    specs = [spec for _, spec in LEAVES_2D]
    # From jax arrays: a device_put of a NumPy array may share the NumPy buffer between
    # devices on the CPU, and such a buffer is never donated.
    g, p, m, v = ([jax.device_put(jnp.array(x), NamedSharding(MESH_2D, s))
                   for x, s in zip(xs, specs)] for xs in arrays(shapes, 2, 2))
    coef = CASES["adamw"][3]()
    step = jax.jit(_multi.adam_multi, donate_argnums=(3, 4, 5))

    def pointers(leaves):
        return [[s.data.unsafe_buffer_pointer() for s in x.addressable_shards]
                for x in leaves if x.size]

    before = pointers([*p, *m, *v])
    new = step(coef, FLAGS, g, p, m, v)
    assert pointers([*new[0], *new[1], *new[2]]) == before


def test_inside_shard_map_each_device_steps_its_blocks():
    """Sharded and replicated leaves in one call inside shard_map equal one device's run."""
    shapes = [(64, 24), (16,), (3, 5), (), (8 * 9000,)]
    specs = [P("d"), P("d"), P(), P(), P("d")]
    flags = np.array([1, 0, 1, 1, 0], np.float32)
    g, p, m, v = (put(xs, specs) for xs in arrays(shapes, 3, 2))
    coef = CASES["adamw"][3]()
    leaf_specs = list(specs)
    sharded = jax.jit(jax.shard_map(
        _multi.adam_multi, mesh=MESH_1D,
        in_specs=(P(), P(), leaf_specs, leaf_specs, leaf_specs, leaf_specs),
        out_specs=(leaf_specs, leaf_specs, leaf_specs)))
    assert "custom_call @fnn_adam_multi_f32" in sharded.lower(coef, flags, g, p, m, v).as_text()
    got = sharded(coef, flags, g, p, m, v)
    whole = [[np.asarray(x) for x in xs] for xs in (g, p, m, v)]
    want = jax.jit(_multi.adam_multi)(coef, flags, *whole)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-7)


def test_inside_shard_map_with_mixed_varying_operands():
    """A leaf whose gradient is sharded while its param and moments are replicated (and the
    reverse) types and computes like the jnp formula."""
    rng = np.random.default_rng(4)
    coef = CASES["nesterov"][3]()

    def make(spec, rows):
        return jnp.asarray(rng.normal(size=(8 * rows if spec == P("d") else rows, 6)),
                           jnp.float32)

    g_specs, p_specs = [P("d"), P()], [P(), P("d")]
    g = put([make(s, 5) for s in g_specs], g_specs)
    p = put([make(s, 5) for s in p_specs], p_specs)
    u = put([make(s, 5) for s in p_specs], p_specs)
    out_specs = ([P("d"), P("d")], [P("d"), P("d")])
    kernel = jax.jit(jax.shard_map(_multi.momentum_multi, mesh=MESH_1D,
                                   in_specs=(P(), P(), g_specs, p_specs, p_specs),
                                   out_specs=out_specs))

    def per_leaf(coef, flags, g, p, u):
        new = [_fused.momentum_reference(coef, *leaf) for leaf in zip(g, p, u)]
        return [x[0] for x in new], [x[1] for x in new]

    formula = jax.jit(jax.shard_map(per_leaf, mesh=MESH_1D,
                                    in_specs=(P(), P(), g_specs, p_specs, p_specs),
                                    out_specs=out_specs))
    flags = np.ones(2, np.float32)
    assert "custom_call @fnn_momentum_multi_f32" in kernel.lower(coef, flags, g, p, u).as_text()
    for a, b in zip(jax.tree.leaves(kernel(coef, flags, g, p, u)),
                    jax.tree.leaves(formula(coef, flags, g, p, u))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-7)


# --------------------------------------------------------------------------- the sums kernel


def float64_norm(xs):
    return np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in xs))


def test_sums_of_sharded_leaves_under_jit_read_only_local_blocks():
    """global_norm and the finiteness test over leaves split over one axis, both axes or none:
    each device sums its blocks with one kernel call per sharding, then an all-reduce of a
    scalar pair over the axes the blocks were split over; nothing is gathered, and a
    replicated leaf is counted once."""
    from optimizers import global_norm, wrappers

    shapes = [s for s, _ in LEAVES_2D]
    specs = [spec for _, spec in LEAVES_2D]
    xs = arrays(shapes, 5, 0)[0]
    placed = [jax.device_put(x, NamedSharding(MESH_2D, s)) for x, s in zip(xs, specs)]
    norm = jax.jit(global_norm)
    entry = norm.lower(placed).compile().as_text()
    entry = entry[entry.index("ENTRY"):]
    assert 'custom_call_target="fnn_sums_f32"' in entry
    assert "all-gather" not in entry and "all-to-all" not in entry
    np.testing.assert_allclose(float(norm(placed)), float64_norm(xs), rtol=2e-6)
    finite = jax.jit(wrappers._all_finite)
    assert bool(finite(placed))
    for leaf in (0, 2, 3, 6):  # split over both axes, over y, replicated, over x
        bad = [x.copy() for x in xs]
        bad[leaf].reshape(-1)[-1] = np.nan
        bad = [jax.device_put(x, NamedSharding(MESH_2D, s)) for x, s in zip(bad, specs)]
        assert not bool(finite(bad)), leaf


def test_sums_inside_shard_map_cover_the_whole_tree():
    from optimizers import global_norm

    shapes = [(64, 24), (16,), (3, 5), (), (8 * 9000,)]
    specs = [P("d"), P("d"), P(), P(), P("d")]
    xs = arrays(shapes, 6, 0)[0]
    placed = put(xs, specs)
    norm = jax.jit(jax.shard_map(global_norm, mesh=MESH_1D, in_specs=(specs,), out_specs=P()))
    assert "custom_call @fnn_sums_f32" in norm.lower(placed).as_text()
    np.testing.assert_allclose(float(norm(placed)), float64_norm(xs), rtol=2e-6)
