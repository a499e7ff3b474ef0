"""The compiled program behind :mod:`fnn.gradcheck`: one check as data, its per-leaf errors.

A check (:class:`Case`) is f, its float64 arguments, which leaves are perturbed
and, in directional mode, the host-drawn unit directions. :func:`run` traces
every case's derivatives and finite differences into one ``jax.jit`` program,
lowers it (finding out on the way which functions have no forward mode) and
compiles it once; per coordinate (or direction) it returns the analytic and
numeric values (:class:`Rows`). :func:`leaf_errors` turns those into each
leaf's relative error and its unresolvable coordinates, on the host.
"""

from __future__ import annotations

import math
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


def _is_real(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer) or \
        jnp.issubdtype(dtype, jnp.bool_)


def _flat_output(value: Any, owner: str) -> jax.Array:
    """f's output as one float64 vector; an error naming f's output if it is not real arrays."""
    leaves = jax.tree_util.tree_leaves(value)
    if not leaves:
        raise ValueError(f"{owner}: f must return an array or a pytree of arrays; got {value!r}.")
    for leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None and isinstance(leaf, (int, float)):
            continue
        if dtype is None or not _is_real(dtype):
            what = f"dtype {dtype}" if dtype is not None else f"{type(leaf).__name__} {leaf!r:.40}"
            raise TypeError(f"{owner}: f must return real-valued arrays (a float loss); got an "
                            f"output of {what}.")
    flat = [jnp.ravel(jnp.asarray(v, jnp.float64)) for v in leaves]
    return jnp.concatenate(flat) if len(flat) != 1 else flat[0]


class Case(NamedTuple):
    """One function to check: its float64 arguments and what is perturbed."""

    f: Callable
    args: tuple
    argnums: tuple
    names: list  # the paths of the checked (float) leaves
    shapes: list  # their shapes
    directions: np.ndarray  # directional mode: (num_directions, total), unit per leaf
    owner: str = "check_grads"  # the name in error messages

    @property
    def sizes(self) -> list:
        return [math.prod(shape) for shape in self.shapes]


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
            seed: int, owner: str = "check_grads") -> Case:
    args = tuple(as_float64(a) for a in args)
    names, shapes = [], []
    for a in argnums:
        for path, leaf in jax.tree_util.tree_flatten_with_path(args[a])[0]:
            if _is_float(leaf):
                names.append(f"args[{a}]{jax.tree_util.keystr(path)}")
                shapes.append(tuple(np.shape(leaf)))
    sizes = [math.prod(shape) for shape in shapes]
    directions = np.zeros((0, 0))
    if mode == "directional" and sizes:
        # drawn on the host: random numbers drawn inside the program would add much to
        # its compile time; normalized to unit length inside each leaf
        directions = np.random.default_rng(seed).standard_normal((num_directions, sum(sizes)))
        starts = np.concatenate([[0], np.cumsum(sizes)])
        for s, e in zip(starts[:-1], starts[1:]):
            directions[:, s:e] /= np.maximum(np.linalg.norm(directions[:, s:e], axis=1,
                                                            keepdims=True), 1e-300)
    return Case(f, args, argnums, names, shapes, directions, owner)


def _flat_function(case: Case, args: tuple) -> tuple[Callable, jax.Array]:
    """f as a function of the flat vector θ of the checked leaves (float64 output), and θ."""
    all_leaves = jax.tree_util.tree_leaves(args)
    checked, rebuild = _checked(args, case.argnums)
    theta, unravel = ravel_pytree(checked)

    def f_flat(t):
        return _flat_output(case.f(*rebuild(all_leaves, unravel(t))), case.owner)

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


class Rows(NamedTuple):
    """What the program returns for one case, per row (a coordinate, or a direction of a leaf).

    With u the row's direction (a unit coordinate vector e_i, or a random unit
    vector inside one leaf), w the output weighting and J f's Jacobian at θ:
    """

    analytic: np.ndarray  # a = ⟨Jᵀw, u⟩, reverse mode (what jax.grad computes)
    numeric: np.ndarray  # n = ⟨w, f(θ + εu) − f(θ − εu)⟩ / 2ε
    numeric2: np.ndarray  # n₂, the same with step 2ε
    tangent: np.ndarray | None  # t = ⟨w, J u⟩, forward mode (None: f has no jvp)
    gradient: float  # ‖Jᵀw‖ over every checked leaf: the scale of the derivatives
    magnitude: float  # ⟨|w|, |f(θ)|⟩: the scale of f's values (non-finite: f(θ) is not finite)


def _case_rows(case: Case, args: tuple, directions: jax.Array, *, forward_mode: bool,
               mode: str, eps: float, batch_size: int, seed: int) -> tuple:
    """The fields of :class:`Rows` (traced inside the one jit of :func:`run`)."""
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

    if mode == "full":  # u = e_i for every coordinate; analytic (Jᵀw)_i
        def coordinate(i):
            return numeric_and_forward(jax.nn.one_hot(i, total, dtype=theta.dtype))

        if total <= batch_size:  # all at once, with no loop in the program
            numeric, numeric2, tangent = jax.vmap(coordinate)(jnp.arange(total))
        else:
            numeric, numeric2, tangent = jax.lax.map(coordinate, jnp.arange(total),
                                                     batch_size=batch_size)
        analytic = reverse
    else:  # u: num_directions random unit vectors inside each leaf
        num_directions = directions.shape[0]
        starts = np.concatenate([[0], np.cumsum(case.sizes)]).astype(int)
        lows, highs = jnp.asarray(starts[:-1]), jnp.asarray(starts[1:])
        index = jnp.arange(total)

        def row(r):
            leaf, k = r // num_directions, r % num_directions
            u = jnp.where((index >= lows[leaf]) & (index < highs[leaf]), directions[k], 0.0)
            return (*numeric_and_forward(u), jnp.vdot(reverse, u))

        # one row at a time (a scan): each row is a few evaluations of f, reusing memory
        numeric, numeric2, tangent, analytic = jax.lax.map(row,
                                                           jnp.arange(n_leaves * num_directions))
    magnitude = jnp.vdot(jnp.abs(w), jnp.abs(value))
    return analytic, numeric, numeric2, tangent, jnp.linalg.norm(reverse), magnitude


# the check's program runs once: LLVM's optimizations cost more compile time than they save
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def run(cases: list[Case], *, mode: str, eps: float, batch_size: int,
        seed: int) -> list[Rows]:
    """Per case its :class:`Rows`, all cases computed by one compiled program."""
    def program(forward_modes):
        def rows(all_args, all_directions):
            return [_case_rows(c, a, d, forward_mode=fm, mode=mode, eps=eps,
                               batch_size=batch_size, seed=seed)
                    for c, a, d, fm in zip(cases, all_args, all_directions, forward_modes)]
        return jax.jit(rows)

    inputs = ([c.args for c in cases], [c.directions for c in cases])
    forward_modes = [True] * len(cases)
    try:  # JAX reports a missing jvp (a custom_vjp inside f) only when lowering
        lowered = program(forward_modes).lower(*inputs)
    except TypeError as error:
        if "forward-mode" not in str(error) and "custom_vjp" not in str(error):
            raise
        forward_modes = [_has_forward_mode(c) for c in cases]
        lowered = program(forward_modes).lower(*inputs)
    values = jax.device_get(lowered.compile(COMPILER_OPTIONS)(*inputs))
    return [Rows(np.asarray(a), np.asarray(n), np.asarray(n2), np.asarray(t) if fm else None,
                 float(g), float(m))
            for (a, n, n2, t, g, m), fm in zip(values, forward_modes)]


# what the check cannot resolve, in units that make a right derivative pass
NOISE_FACTOR = 10.0  # times |n(ε) − n(2ε)| and eps_float64 · ⟨|w|, |f|⟩ / ε: n's own error
ROUNDING_FACTOR = 100.0  # times eps_float64 · ‖Jᵀw‖: the analytic side's rounding
FLOAT64_EPS = float(np.finfo(np.float64).eps)


class LeafResult(NamedTuple):
    """One leaf's verdict: relative errors, the differences' noise, what cannot be resolved."""

    reverse: float
    forward: float | None
    noise: float
    unresolvable: list  # (index, n(ε), n(2ε), JAX's value) of every unresolvable row


def _relative_error(analytic: np.ndarray, numeric: np.ndarray, floor: float,
                    resolution: np.ndarray | None, tol: float) -> float:
    """‖a − n‖ / max(‖a‖, ‖n‖, floor), and per row |aᵢ − nᵢ| / max(‖a‖, ‖n‖, rᵢ / tol).

    The result is the larger of the two (the second only with a ``resolution``
    r: one noisy row, which raises the leaf's floor, does not loosen the other
    rows); non-finite becomes inf.
    """
    gap = np.abs(analytic - numeric)
    scale = max(np.linalg.norm(analytic), np.linalg.norm(numeric))
    error = np.linalg.norm(gap) / np.maximum(scale, floor)
    if resolution is not None and gap.size:
        error = np.maximum(error, np.max(gap / np.maximum(scale, resolution / tol)))
    return float(error) if np.isfinite(error) else float("inf")


def _lower_median(values: np.ndarray) -> float:
    """The lower median (a single largest value never moves it, unless it is alone)."""
    return float(np.partition(values, (values.size - 1) // 2)[(values.size - 1) // 2]) \
        if values.size else 0.0


def leaf_errors(case: Case, rows: Rows, *, mode: str, eps: float, tol: float,
                tiny: float | None) -> dict[str, LeafResult]:
    """Each checked leaf's :class:`LeafResult` from the program's rows.

    A row is unresolvable when its centered differences do not settle:
    dᵢ = |nᵢ(ε) − nᵢ(2ε)| exceeds tol · ‖Jᵀw‖ (the accuracy the check needs,
    relative to the derivatives' scale) plus the rounding of f's values,
    100 · eps_float64 · ⟨|w|, |f|⟩ / ε, or is not finite: f jumps or has a kink
    within 2ε along the row, is not finite there, or curves too fast for this ε.
    Such rows are reported and left out of the leaf's errors. Over the others
    (k of them), with ``tiny`` None, the leaf's floor is (10 ‖d‖ + ρ √k) / tol
    with ρ = eps_float64 · (100 ‖Jᵀw‖ + 10 ⟨|w|, |f|⟩ / ε) the rounding of one
    row's analytic and numeric values, and each row is also held to its own
    resolution rᵢ = 10 max(dᵢ, q) + ρ, where q, the
    larger of the lower medians of d over the leaf and over the whole check,
    keeps a d that is small by chance from making its row too strict.
    """
    noise = np.abs(rows.numeric - rows.numeric2)
    threshold = tol * rows.gradient + ROUNDING_FACTOR * FLOAT64_EPS * rows.magnitude / eps
    resolved = np.isfinite(noise) & (noise <= threshold)
    # rounding of one row: of the analytic value, and of n (f's values are rounded to
    # about eps_float64 · |f|, so n moves in steps of about eps_float64 · |f| / ε)
    rounding = FLOAT64_EPS * (ROUNDING_FACTOR * rows.gradient +
                              NOISE_FACTOR * rows.magnitude / eps)
    check_noise = _lower_median(noise[resolved])
    per_leaf = (case.sizes if mode == "full" else [case.directions.shape[0]] * len(case.sizes))
    starts = np.concatenate([[0], np.cumsum(per_leaf)]).astype(int)
    results = {}
    for name, shape, s, e in zip(case.names, case.shapes, starts[:-1], starts[1:]):
        keep = np.flatnonzero(resolved[s:e]) + s
        unresolvable = [(tuple(int(j) for j in np.unravel_index(i, shape)) if mode == "full"
                         else int(i), float(rows.numeric[s + i]), float(rows.numeric2[s + i]),
                         float(rows.analytic[s + i])) for i in np.flatnonzero(~resolved[s:e])]
        d = noise[keep]
        if tiny is None:
            floor = max((NOISE_FACTOR * np.linalg.norm(d) + rounding * np.sqrt(keep.size)) / tol,
                        np.finfo(np.float64).tiny)
            q = max(_lower_median(d), check_noise)
            resolution = NOISE_FACTOR * np.maximum(d, q) + rounding
        else:
            floor, resolution = tiny, None
        numeric = rows.numeric[keep]
        forward = (_relative_error(rows.tangent[keep], numeric, floor, resolution, tol)
                   if rows.tangent is not None else None)
        results[name] = LeafResult(
            _relative_error(rows.analytic[keep], numeric, floor, resolution, tol), forward,
            float(np.linalg.norm(d)), unresolvable)
    return results


def second_order(case: Case, seed: int) -> Callable:
    """The function θ ↦ Jᵀw (the gradient of a scalar f) whose derivatives order=2 checks."""
    def gradient(*args):
        f_flat, theta = _flat_function(case, args)
        value, pullback = jax.vjp(f_flat, theta)
        return pullback(_output_weights(value, seed + 2))[0]

    return gradient
