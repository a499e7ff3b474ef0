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


def _relative(a: jax.Array, n: jax.Array, tiny: float) -> jax.Array:
    scale = jnp.maximum(jnp.maximum(jnp.linalg.norm(a), jnp.linalg.norm(n)), tiny)
    return jnp.linalg.norm(a - n) / scale


def _flat_function(case: Case, args: tuple) -> tuple[Callable, jax.Array]:
    """f as a function of the flat vector θ of the checked leaves (float64 output), and θ."""
    all_leaves = jax.tree_util.tree_leaves(args)
    checked, rebuild = _checked(args, case.argnums)
    theta, unravel = ravel_pytree(checked)

    def f_flat(t):
        return _flat_output(case.f(*rebuild(all_leaves, unravel(t))))

    return f_flat, theta


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


def _case_errors(case: Case, args: tuple, directions: jax.Array, *, forward_mode: bool,
                 mode: str, eps: float, tiny: float, batch_size: int, seed: int) -> jax.Array:
    """The per-leaf relative errors of one case (traced inside the one jit of :func:`_run`)."""
    f_flat, theta = _flat_function(case, args)
    total, n_leaves = theta.size, len(case.sizes)

    value, pullback = jax.vjp(f_flat, theta)
    # the output weighting w: 1 for a scalar f, fixed pseudo-random numbers otherwise
    w = (jnp.ones_like(value) if value.size == 1 else
         jnp.asarray(np.random.default_rng(seed + 1).standard_normal(value.shape)))
    (reverse,) = pullback(w)  # Jᵀ w
    forward = jax.linearize(f_flat, theta)[1] if forward_mode else None

    def numeric_and_forward(u):
        """⟨w, centered difference along u⟩ and ⟨w, J u⟩ (0 without forward mode)."""
        difference = f_flat(theta + eps * u) - f_flat(theta - eps * u)
        tangent = jnp.vdot(w, forward(u)) if forward is not None else jnp.zeros(())
        return jnp.vdot(w, difference) / (2 * eps), tangent

    starts = np.concatenate([[0], np.cumsum(case.sizes)]).astype(int)
    if mode == "full":  # u = e_i for every coordinate; analytic (Jᵀw)_i
        def coordinate(i):
            return numeric_and_forward(jax.nn.one_hot(i, total, dtype=theta.dtype))

        if total <= batch_size:  # all at once, with no loop in the program
            numeric, tangent = jax.vmap(coordinate)(jnp.arange(total))
        else:
            numeric, tangent = jax.lax.map(coordinate, jnp.arange(total), batch_size=batch_size)
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
        numeric, tangent, analytic = jax.lax.map(row, jnp.arange(n_leaves * num_directions))
        bounds = np.arange(n_leaves + 1) * num_directions
    errors = []  # per leaf: (reverse mode vs numeric, forward mode vs numeric)
    for s, e in zip(bounds[:-1], bounds[1:]):
        errors.append(jnp.stack([
            _relative(analytic[s:e], numeric[s:e], tiny),
            _relative(tangent[s:e], numeric[s:e], tiny) if forward is not None else -1.0]))
    return jnp.stack(errors) if errors else jnp.zeros((0, 2))


# the check's program runs once: LLVM's optimizations cost more compile time than they save
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def run(cases: list[Case], *, mode: str, eps: float, tiny: float, batch_size: int,
         seed: int) -> list[dict]:
    """Every case's per-leaf (reverse, forward) errors, computed by one compiled program."""
    def program(forward_modes):
        def errors(all_args, all_directions):
                return [_case_errors(c, a, d, forward_mode=fm, mode=mode, eps=eps, tiny=tiny,
                                 batch_size=batch_size, seed=seed) if c.names else jnp.zeros((0, 2))
                    for c, a, d, fm in zip(cases, all_args, all_directions, forward_modes)]
        return jax.jit(errors)

    inputs = ([c.args for c in cases], [c.directions for c in cases])
    try:  # JAX reports a missing jvp (a custom_vjp inside f) only when lowering
        lowered = program([True] * len(cases)).lower(*inputs)
    except TypeError as error:
        if "forward-mode" not in str(error) and "custom_vjp" not in str(error):
            raise
        lowered = program([_has_forward_mode(c) for c in cases]).lower(*inputs)
    values = lowered.compile(COMPILER_OPTIONS)(*inputs)
    out = []
    for case, errors in zip(cases, values):
        errors = np.asarray(errors)
        errors = np.where(np.isnan(errors), np.inf, errors)  # f or its derivative gave NaN
        out.append({name: (float(r), None if f < 0 else float(f))  # f < 0: no forward mode
                    for name, (r, f) in zip(case.names, errors)})
    return out


def second_order(case: Case, seed: int) -> Callable:
    """The function θ ↦ Jᵀw (the gradient of a scalar f) whose derivatives order=2 checks."""
    def gradient(*args):
        f_flat, theta = _flat_function(case, args)
        value, pullback = jax.vjp(f_flat, theta)
        w = (jnp.ones_like(value) if value.size == 1 else
             jnp.asarray(np.random.default_rng(seed + 2).standard_normal(value.shape)))
        return pullback(w)[0]

    return gradient
