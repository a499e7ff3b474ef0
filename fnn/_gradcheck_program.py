"""The compiled program behind :mod:`fnn.gradcheck`: one check as data, its per-leaf errors.

A check (:class:`Case`) is f, its float64 arguments, which leaves are perturbed
and, in directional mode, the host-drawn unit directions. :func:`run` traces
every case's error computation into one ``jax.jit`` program, lowers it (finding
out on the way which functions have no forward mode) and compiles it once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def as_float64(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64) if _is_float(x) else jnp.asarray(x), tree)


def _flat_output(value: Any) -> jax.Array:
    leaves = [jnp.ravel(jnp.asarray(v, jnp.float64)) for v in jax.tree_util.tree_leaves(value)]
    return jnp.concatenate(leaves) if len(leaves) != 1 else leaves[0]


class Case(NamedTuple):
    """One function to check: its float64 arguments and what is perturbed."""

    f: Callable
    args: tuple
    argnums: tuple
    names: list  # the paths of the checked (float) leaves
    sizes: list
    directions: np.ndarray  # directional mode: (num_directions, total), unit per leaf


def _checked(args: tuple, argnums: tuple) -> tuple[list, Callable]:
    """The float leaves of ``args[argnums]`` and a function putting new values in their place."""
    flat, treedef = jax.tree_util.tree_flatten(args)
    leaf_args = jax.tree_util.tree_flatten(
        tuple(jax.tree_util.tree_map(lambda _, i=i: i, a) for i, a in enumerate(args)))[0]
    where = [k for k, (leaf, a) in enumerate(zip(flat, leaf_args))
             if a in argnums and _is_float(leaf)]

    def rebuild(all_leaves: list, values: list) -> tuple:
        leaves = list(all_leaves)
        for k, v in zip(where, values):
            leaves[k] = v
        return jax.tree_util.tree_unflatten(treedef, leaves)

    return [flat[k] for k in where], rebuild


def prepare(f: Callable, args: tuple, argnums: tuple, mode: str, num_directions: int,
             seed: int) -> Case:
    args = tuple(as_float64(a) for a in args)
    names, sizes = [], []
    for a in argnums:
        for path, leaf in jax.tree_util.tree_flatten_with_path(args[a])[0]:
            if _is_float(leaf):
                names.append(f"args[{a}]{jax.tree_util.keystr(path)}")
                sizes.append(int(np.size(leaf)))
    directions = np.zeros((0, 0))
    if mode == "directional" and sizes:
        # drawn on the host: random numbers drawn inside the program would add much to
        # its compile time; normalized to unit length inside each leaf
        directions = np.random.default_rng(seed).standard_normal((num_directions, sum(sizes)))
        starts = np.concatenate([[0], np.cumsum(sizes)])
        for s, e in zip(starts[:-1], starts[1:]):
            directions[:, s:e] /= np.maximum(np.linalg.norm(directions[:, s:e], axis=1,
                                                            keepdims=True), 1e-300)
    return Case(f, args, argnums, names, sizes, directions)


def _flat_function(case: Case, args: tuple) -> tuple[Callable, jax.Array]:
    """f as a function of the flat vector θ of the checked leaves (float64 output), and θ."""
    all_leaves = jax.tree_util.tree_leaves(args)
    checked, rebuild = _checked(args, case.argnums)
    theta, unravel = ravel_pytree(checked)

    def f_flat(t):
        return _flat_output(case.f(*rebuild(all_leaves, unravel(t))))

    return f_flat, theta


def _output_weights(value: jax.Array, seed: int) -> jax.Array:
    """The output weighting w: 1 for a scalar f, fixed pseudo-random normals otherwise.

    Small outputs get host-drawn constants; large ones (the gradient checked by
    order=2) are drawn in the program, as a big constant would slow compilation.
    """
    if value.size == 1:
        return jnp.ones_like(value)
    if value.size <= 4096:
        return jnp.asarray(np.random.default_rng(seed).standard_normal(value.shape))
    return jax.random.normal(jax.random.key(seed), value.shape, value.dtype)


def _has_forward_mode(case: Case) -> bool:
    """False where f has no jvp (a custom_vjp inside): JAX says so when lowering a jvp of f."""
    def tangent(args):
        f_flat, theta = _flat_function(case, args)
        return jax.jvp(f_flat, (theta,), (theta,))[1]

    try:
        jax.jit(tangent).lower(case.args)
    except TypeError as error:
        if "forward-mode" in str(error) or "custom_vjp" in str(error):
            return False
        raise
    return True


# per-leaf statistics the program returns (norms over the leaf's coordinates or directions)
STATS = ("reverse_gap", "reverse", "numeric", "forward_gap", "forward", "noise", "count",
         "gradient")


def _case_stats(case: Case, args: tuple, directions: jax.Array, *, forward_mode: bool,
                mode: str, eps: float, batch_size: int, seed: int) -> jax.Array:
    """Per leaf the norms ``STATS`` (traced inside the one jit of :func:`run`).

    With a = ⟨Jᵀw, u⟩ (reverse), t = ⟨w, J u⟩ (forward), n = ⟨w, f(θ + εu) −
    f(θ − εu)⟩ / 2ε and n₂ the same with step 2ε, over the leaf's directions u:
    ‖a − n‖, ‖a‖, ‖n‖, ‖t − n‖, ‖t‖, ‖n − n₂‖ (the differences' own error:
    rounding grows as ε shrinks and truncation as ε grows, so n₂ moves from n
    about as much as n is off), the number of directions and ‖Jᵀw‖ over every
    checked leaf (the scale of the analytic values' rounding).
    """
    f_flat, theta = _flat_function(case, args)
    total, n_leaves = theta.size, len(case.sizes)

    value, pullback = jax.vjp(f_flat, theta)
    w = _output_weights(value, seed + 1)
    (reverse,) = pullback(w)  # Jᵀ w
    forward = jax.linearize(f_flat, theta)[1] if forward_mode else None
    steps = jnp.array([eps, -eps, 2 * eps, -2 * eps])

    def numeric_and_forward(u):
        """n, n₂ and ⟨w, J u⟩ (0 without forward mode) along u."""
        values = jax.vmap(lambda step: jnp.vdot(w, f_flat(theta + step * u)))(steps)
        tangent = jnp.vdot(w, forward(u)) if forward is not None else jnp.zeros(())
        return (values[0] - values[1]) / (2 * eps), (values[2] - values[3]) / (4 * eps), tangent

    starts = np.concatenate([[0], np.cumsum(case.sizes)]).astype(int)
    if mode == "full":  # u = e_i for every coordinate; analytic (Jᵀw)_i
        def coordinate(i):
            return numeric_and_forward(jax.nn.one_hot(i, total, dtype=theta.dtype))

        if total <= batch_size:  # all at once, with no loop in the program
            numeric, numeric2, tangent = jax.vmap(coordinate)(jnp.arange(total))
        else:
            numeric, numeric2, tangent = jax.lax.map(coordinate, jnp.arange(total),
                                                     batch_size=batch_size)
        analytic = reverse
        bounds = starts
    else:  # u: num_directions random unit vectors inside each leaf
        num_directions = directions.shape[0]
        lows, highs = jnp.asarray(starts[:-1]), jnp.asarray(starts[1:])
        index = jnp.arange(total)

        def row(r):
            leaf, k = r // num_directions, r % num_directions
            u = jnp.where((index >= lows[leaf]) & (index < highs[leaf]), directions[k], 0.0)
            return (*numeric_and_forward(u), jnp.vdot(reverse, u))

        # one row at a time (a scan): each row is a few evaluations of f, reusing memory
        numeric, numeric2, tangent, analytic = jax.lax.map(row,
                                                           jnp.arange(n_leaves * num_directions))
        bounds = np.arange(n_leaves + 1) * num_directions
    norm, gradient = jnp.linalg.norm, jnp.linalg.norm(reverse)
    rows = [jnp.stack([norm(a - n), norm(a), norm(n), norm(t - n), norm(t), norm(n - n2),
                       jnp.asarray(a.size, a.dtype), gradient])
            for a, n, n2, t in ((analytic[s:e], numeric[s:e], numeric2[s:e], tangent[s:e])
                                for s, e in zip(bounds[:-1], bounds[1:]))]
    return jnp.stack(rows) if rows else jnp.zeros((0, len(STATS)))


# the check's program runs once: LLVM's optimizations cost more compile time than they save
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def run(cases: list[Case], *, mode: str, eps: float, batch_size: int,
        seed: int) -> list[tuple[dict, bool]]:
    """Per case: leaf path -> its ``STATS`` (a dict), and whether forward mode was checked.

    All cases are computed by one compiled program.
    """
    def program(forward_modes):
        def stats(all_args, all_directions):
            return [_case_stats(c, a, d, forward_mode=fm, mode=mode, eps=eps,
                                batch_size=batch_size, seed=seed)
                    if c.names else jnp.zeros((0, len(STATS)))
                    for c, a, d, fm in zip(cases, all_args, all_directions, forward_modes)]
        return jax.jit(stats)

    inputs = ([c.args for c in cases], [c.directions for c in cases])
    forward_modes = [True] * len(cases)
    try:  # JAX reports a missing jvp (a custom_vjp inside f) only when lowering
        lowered = program(forward_modes).lower(*inputs)
    except TypeError as error:
        if "forward-mode" not in str(error) and "custom_vjp" not in str(error):
            raise
        forward_modes = [_has_forward_mode(c) for c in cases]
        lowered = program(forward_modes).lower(*inputs)
    values = lowered.compile(COMPILER_OPTIONS)(*inputs)
    return [({name: dict(zip(STATS, map(float, row))) for name, row in
              zip(case.names, np.asarray(stats))}, fm)
            for case, stats, fm in zip(cases, values, forward_modes)]


def second_order(case: Case, seed: int) -> Callable:
    """The function θ ↦ Jᵀw (the gradient of a scalar f) whose derivatives order=2 checks."""
    def gradient(*args):
        f_flat, theta = _flat_function(case, args)
        value, pullback = jax.vjp(f_flat, theta)
        return pullback(_output_weights(value, seed + 2))[0]

    return gradient
