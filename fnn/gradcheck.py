"""Gradient checking: JAX's derivatives against centered finite differences, leaf by leaf.

For a function f of parameters θ (any pytrees) and a direction u, the centered
difference (f(θ + εu) − f(θ − εu)) / 2ε approximates the directional derivative
J u with error O(ε²). :func:`check_grads` compares it, per leaf θ_l of the
checked arguments, with what JAX computes:

* reverse mode (``vjp``, what ``jax.grad`` uses, also through a ``custom_vjp``):
  with an output weighting w (1 for a scalar f, random otherwise), the
  analytic ⟨Jᵀw, u⟩ against the numeric ⟨w, (f(θ + εu) − f(θ − εu)) / 2ε⟩;
* forward mode (``jvp``), where f supports it: ⟨w, J u⟩ against the same
  numeric value, which also checks the inner-product identity
  ⟨w, J u⟩ = ⟨Jᵀw, u⟩ between the two modes.

The directions u are either every coordinate (``mode="full"``, small inputs;
the Jacobian-vector products of all coordinates are vectorized with ``vmap``)
or a few random unit vectors inside each leaf (``mode="directional"``; the cost
is a few evaluations of f per leaf, whatever the leaf's size). Per leaf the
report holds the relative error ‖a − n‖ / max(‖a‖, ‖n‖, tiny) over that leaf's
coordinates or directions. Everything runs in float64 and as one compiled program.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


class GradCheckReport(NamedTuple):
    """Per-leaf relative errors of a gradient check (paths like ``args[0]['w']``).

    ``errors[path]`` is the larger of ``reverse[path]`` (reverse mode, what
    ``jax.grad`` uses, against finite differences) and ``forward[path]``
    (forward mode; None where f has no jvp, e.g. a custom_vjp inside).
    ``passed``, ``worst`` (the path of the largest error) and ``max_error``
    summarize it; ``str(report)`` is a table with the failing leaves marked.
    """

    errors: dict
    tol: float
    mode: str
    reverse: dict | None = None
    forward: dict | None = None

    @property
    def worst(self) -> str:
        return max(self.errors, key=self.errors.get) if self.errors else "(no leaves)"

    @property
    def max_error(self) -> float:
        return max(self.errors.values()) if self.errors else 0.0

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tol

    def __str__(self) -> str:
        width = max([len(p) for p in self.errors] + [4])
        lines = [f"{'leaf':{width}}  {'error':>9}  {'reverse':>9}  {'forward':>9}  "
                 f"({self.mode}, tol {self.tol:.0e})"]
        for path, error in self.errors.items():
            rev = (self.reverse or {}).get(path)
            fwd = (self.forward or {}).get(path)
            cells = [f"{v:9.2e}" if v is not None else f"{'-':>9}" for v in (error, rev, fwd)]
            flag = "" if error <= self.tol else "  <-- FAIL"
            lines.append(f"{path:{width}}  {'  '.join(cells)}{flag}")
        return "\n".join(lines)


class GradientCheckError(AssertionError):
    """A gradient check failed; ``report`` holds every leaf's error, the message the worst."""

    def __init__(self, report: GradCheckReport, name: str = ""):
        where = f" of {name!r}" if name else ""
        super().__init__(
            f"gradient check{where} failed: {report.worst} has relative error "
            f"{report.max_error:.3e} > tol {report.tol:.1e}\n{report}")
        self.report = report


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _float64(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64) if _is_float(x) else jnp.asarray(x), tree)


def _flat_output(value: Any) -> jax.Array:
    leaves = [jnp.ravel(jnp.asarray(v, jnp.float64)) for v in jax.tree_util.tree_leaves(value)]
    return jnp.concatenate(leaves) if len(leaves) != 1 else leaves[0]


def numerical_grad(f: Callable, x: Any, eps: float = 1e-5, batch_size: int = 512) -> Any:
    """The gradient of a scalar ``f`` at ``x`` by centered differences, in float64.

    ∂f/∂xᵢ ≈ (f(x + ε eᵢ) − f(x − ε eᵢ)) / 2ε for every coordinate i: the 2n
    evaluations are vmapped over the perturbation directions (in chunks of
    ``batch_size`` directions under ``lax.map``), not a Python loop.

    Args:
      f: a function of ``x`` returning a scalar.
      x: an array or a pytree of float arrays (cast to float64).
      eps: the step ε.
      batch_size: directions evaluated together.

    Returns:
      The gradient, with the structure of ``x`` (float64).

    Example:
        >>> fnn.gradcheck.numerical_grad(lambda x: jnp.sum(x ** 3), jnp.ones(3))   # ≈ [3, 3, 3]
    """
    if not callable(f):
        raise TypeError(f"numerical_grad: f must be a function; got {f!r}.")
    if not eps > 0:
        raise ValueError(f"numerical_grad: eps must be > 0; got {eps!r}.")
    with jax.enable_x64(True):
        flat, unravel = ravel_pytree(_float64(x))
        out = jax.eval_shape(lambda t: f(unravel(t)), flat)
        if getattr(out, "shape", None) != ():
            raise ValueError(f"numerical_grad: f must return a scalar; got {out}.")

        def partial(i):
            e = jnp.zeros_like(flat).at[i].set(eps)
            return (f(unravel(flat + e)) - f(unravel(flat - e))) / (2 * eps)

        size = max(flat.size, 1)
        values = jax.jit(lambda: jax.lax.map(partial, jnp.arange(flat.size),
                                             batch_size=min(batch_size, size)))()
        return unravel(values.astype(jnp.float64))


# ------------------------------------------------------------------ one check, as data


class _Case(NamedTuple):
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


def _prepare(f: Callable, args: tuple, argnums: tuple, mode: str, num_directions: int,
             seed: int) -> _Case:
    args = tuple(_float64(a) for a in args)
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
    return _Case(f, args, argnums, names, sizes, directions)


def _relative(a: jax.Array, n: jax.Array, tiny: float) -> jax.Array:
    scale = jnp.maximum(jnp.maximum(jnp.linalg.norm(a), jnp.linalg.norm(n)), tiny)
    return jnp.linalg.norm(a - n) / scale


def _flat_function(case: _Case, args: tuple) -> tuple[Callable, jax.Array]:
    """f as a function of the flat vector θ of the checked leaves (float64 output), and θ."""
    all_leaves = jax.tree_util.tree_leaves(args)
    checked, rebuild = _checked(args, case.argnums)
    theta, unravel = ravel_pytree(checked)

    def f_flat(t):
        return _flat_output(case.f(*rebuild(all_leaves, unravel(t))))

    return f_flat, theta


def _has_forward_mode(case: _Case) -> bool:
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


def _case_errors(case: _Case, args: tuple, directions: jax.Array, *, forward_mode: bool,
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
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _run(cases: list[_Case], *, mode: str, eps: float, tiny: float, batch_size: int,
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
    values = lowered.compile(_COMPILER_OPTIONS)(*inputs)
    out = []
    for case, errors in zip(cases, values):
        errors = np.asarray(errors)
        errors = np.where(np.isnan(errors), np.inf, errors)  # f or its derivative gave NaN
        out.append({name: (float(r), None if f < 0 else float(f))  # f < 0: no forward mode
                    for name, (r, f) in zip(case.names, errors)})
    return out


def _second_order(case: _Case, seed: int) -> Callable:
    """The function θ ↦ Jᵀw (the gradient of a scalar f) whose derivatives order=2 checks."""
    def gradient(*args):
        f_flat, theta = _flat_function(case, args)
        value, pullback = jax.vjp(f_flat, theta)
        w = (jnp.ones_like(value) if value.size == 1 else
             jnp.asarray(np.random.default_rng(seed + 2).standard_normal(value.shape)))
        return pullback(w)[0]

    return gradient


# ------------------------------------------------------------------ the public checks


def _validated(owner: str, f: Any, args: tuple, argnums: Any, mode: str, order: int,
               eps: float, tol: float, num_directions: int) -> tuple[int, ...]:
    if not callable(f):
        raise TypeError(f"{owner}: f must be a function; got {f!r}.")
    if mode not in ("full", "directional"):
        raise ValueError(f"{owner}: mode must be 'full' or 'directional'; got {mode!r}.")
    if order not in (1, 2) or isinstance(order, bool):
        raise ValueError(f"{owner}: order must be 1 or 2; got {order!r}.")
    if not (isinstance(eps, (int, float)) and eps > 0) or not (
            isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"{owner}: eps and tol must be numbers > 0; got eps={eps!r}, "
                         f"tol={tol!r}.")
    if isinstance(num_directions, bool) or not isinstance(num_directions, int) or \
            num_directions < 1:
        raise ValueError(f"{owner}: num_directions must be an int >= 1; got {num_directions!r}.")
    if not args:
        raise ValueError(f"{owner}: pass the arguments to differentiate at, e.g. "
                         "check_grads(f, params).")
    numbers = tuple(range(len(args))) if argnums is None else (
        (argnums,) if isinstance(argnums, int) else tuple(argnums))
    if not numbers or any(isinstance(a, bool) or not isinstance(a, int) or
                          not 0 <= a < len(args) for a in numbers):
        raise ValueError(f"{owner}: argnums {argnums!r} out of range for {len(args)} "
                         f"arguments (valid: 0 to {len(args) - 1}).")
    return tuple(sorted(set(numbers)))


def _seed(key: Any) -> int:
    if key is None:
        return 0
    if isinstance(key, (int, np.integer)):
        return int(key)
    data = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                      else key)
    return int(np.ravel(data).astype(np.uint64) @ (np.arange(data.size, dtype=np.uint64) + 1))


def check_grads(f: Callable, *args: Any, argnums: int | Sequence[int] | None = None,
                eps: float = 1e-5, tol: float = 1e-6, mode: str = "full",
                num_directions: int = 2, key: Any = None, order: int = 1,
                batch_size: int = 512, tiny: float = 1e-12,
                raise_on_failure: bool = True) -> GradCheckReport:
    """Checks JAX's derivatives of ``f`` against centered finite differences, per leaf.

    For each float leaf θ_l of the checked arguments and directions u inside it
    (every coordinate, or random unit vectors), compares the numeric
    n = ⟨w, f(θ + εu) − f(θ − εu)⟩ / 2ε with reverse mode a = ⟨Jᵀw, u⟩ (what
    ``jax.grad`` computes) and, where f supports forward mode, with ⟨w, J u⟩
    from ``jvp``; w = 1 for a scalar f. Reports per leaf the relative error
    ‖a − n‖ / max(‖a‖, ‖n‖, tiny), in float64.

    Args:
      f: the function; its output may be a scalar, an array or a pytree of arrays.
      *args: its arguments (arrays or pytrees); float leaves are cast to float64,
        integer leaves (labels) are held fixed and not checked.
      argnums: which positional arguments to check (default: all).
      eps: the finite-difference step ε.
      tol: the largest relative error that passes.
      mode: "full" (every coordinate; small inputs) or "directional"
        (``num_directions`` random unit directions per leaf; millions of params).
      num_directions: directions per leaf in directional mode.
      key: a PRNG key or int seeding the directions (default: seed 0).
      order: 1 checks f's derivatives; 2 also checks the derivatives of its
        gradient θ ↦ Jᵀw, reported as ``"d/d<leaf> of grad"``.
      batch_size: coordinates evaluated together (vmapped) in full mode.
      tiny: the smallest denominator of the relative error. A derivative that is
        zero in exact arithmetic (a bias followed by BatchNorm) still shows
        finite-difference noise of about 1e-16·|f| / ε; raise ``tiny`` above
        that noise / ``tol`` to let such leaves pass.
      raise_on_failure: raise :class:`GradientCheckError` when a leaf fails.

    Returns:
      A :class:`GradCheckReport` with every leaf's error.

    Raises:
      GradientCheckError: a leaf's error exceeds ``tol``; the message names it.

    Example:
        >>> report = fnn.gradcheck.check_grads(loss, params, batch, argnums=0)
        >>> report.worst, report.max_error
        >>> fnn.gradcheck.check_grads(loss, params, batch, argnums=0, mode="directional")
    """
    return check_grads_many({"": (f, args)}, argnums=argnums, eps=eps, tol=tol, mode=mode,
                            num_directions=num_directions, key=key, order=order,
                            batch_size=batch_size, tiny=tiny,
                            raise_on_failure=raise_on_failure)[""]


def check_grads_many(checks: dict[str, tuple[Callable, tuple]], *,
                     argnums: int | Sequence[int] | None = None, eps: float = 1e-5,
                     tol: float = 1e-6, mode: str = "full", num_directions: int = 2,
                     key: Any = None, order: int = 1, batch_size: int = 512,
                     tiny: float = 1e-12,
                     raise_on_failure: bool = True) -> dict[str, GradCheckReport]:
    """:func:`check_grads` of several functions, compiled as one program.

    Args:
      checks: name -> (f, args) with ``args`` the tuple of f's arguments.
      argnums, eps, tol, mode, num_directions, key, order, batch_size, tiny,
        raise_on_failure: as :func:`check_grads`, applied to every check.

    Returns:
      name -> :class:`GradCheckReport`.

    Example:
        >>> reports = fnn.gradcheck.check_grads_many({"dense": (f1, (p1, x)),
        ...                                           "conv": (f2, (p2, x))})
    """
    if not isinstance(checks, dict):
        raise TypeError(f"check_grads_many: checks must be a dict name -> (f, args); "
                        f"got {type(checks).__name__}.")
    seed = _seed(key)
    settings = dict(mode=mode, eps=eps, tiny=tiny, batch_size=batch_size, seed=seed)
    with jax.enable_x64(True):
        cases = []
        for name, check in checks.items():
            owner = f"check_grads[{name!r}]" if name else "check_grads"
            if not (isinstance(check, tuple) and len(check) == 2):
                raise TypeError(f"{owner}: expected (f, args); got {check!r}.")
            f, args = check
            args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
            numbers = _validated(owner, f, args, argnums, mode, order, eps, tol, num_directions)
            cases.append(_prepare(f, args, numbers, mode, num_directions, seed))
        if order == 2:
            cases += [_prepare(_second_order(c, seed), c.args, c.argnums, mode, num_directions,
                               seed) for c in cases]
        results = _run(cases, **settings)
        if order == 2:
            n = len(checks)
            for errors, second in zip(results[:n], results[n:]):
                errors.update({f"d/d{p} of grad": v for p, v in second.items()})
    reports = {}
    for name, pairs in zip(checks, results):
        reverse = {p: r for p, (r, _) in pairs.items()}
        forward = {p: f for p, (_, f) in pairs.items()}
        errors = {p: max(r, f if f is not None else 0.0) for p, (r, f) in pairs.items()}
        reports[name] = GradCheckReport(errors, tol, mode, reverse, forward)
    if raise_on_failure:
        for name, report in reports.items():
            if not report.passed:
                raise GradientCheckError(report, name)
    return reports


__all__ = ["GradCheckReport", "GradientCheckError", "check_grads", "check_grads_many",
           "numerical_grad"]
