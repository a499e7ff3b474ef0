"""Gradient checking: finite differences against JAX's derivatives, leaf by leaf, in float64.

The centered difference (f(θ + εu) − f(θ − εu)) / 2ε approximates the
directional derivative J u with error O(ε²). :func:`check_grads` compares it with
JAX's ``jvp`` for every argument leaf and reports, per leaf, the relative error
‖a − n‖ / max(‖a‖, ‖n‖, tiny) of analytic (a) against numeric (n) values:

* ``mode="full"``: every coordinate of every leaf (u = basis vectors), vectorized
  with ``lax.map`` over coordinates; for small inputs.
* ``mode="directional"``: a few random unit directions per leaf, plus the
  reverse-mode inner-product identity ⟨w, J u⟩ = ⟨Jᵀ w, u⟩ (so ``jax.grad``'s
  backward pass is checked too); scales to millions of parameters.

Everything runs in float64 (inside ``jax.enable_x64``) and in one compiled program.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


class GradientCheckError(AssertionError):
    """A gradient check failed; ``report`` holds every leaf's error, the message the worst."""

    def __init__(self, report: GradCheckReport):
        super().__init__(
            f"gradient check failed: {report.worst} has relative error {report.max_error:.3e} "
            f"> tol {report.tol:.1e}\n{report}")
        self.report = report


class GradCheckReport(NamedTuple):
    """Per-leaf relative errors of a gradient check (paths like ``args[0]['w']``)."""

    errors: dict
    tol: float
    mode: str

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
        lines = [f"{'leaf':{width}}  relative error ({self.mode})"]
        for path, error in self.errors.items():
            flag = "" if error <= self.tol else "  <-- FAIL"
            lines.append(f"{path:{width}}  {error:.3e}{flag}")
        return "\n".join(lines)


def _float64(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
        else jnp.asarray(x), tree)


def numerical_grad(f: Callable, x: Any, eps: float = 1e-5, batch_size: int = 512) -> Any:
    """The gradient of a scalar ``f`` at ``x`` by centered differences, in float64.

    ∂f/∂xᵢ ≈ (f(x + ε eᵢ) − f(x − ε eᵢ)) / 2ε for every coordinate i, computed
    with ``lax.map`` over coordinates in batches of ``batch_size`` (vmapped), not a
    Python loop. ``x`` may be an array or a pytree.

    Example:
        >>> fnn.gradcheck.numerical_grad(lambda x: jnp.sum(x ** 3), jnp.ones(3))   # ≈ [3, 3, 3]
    """
    with jax.enable_x64(True):
        flat, unravel = ravel_pytree(_float64(x))

        def partial(i):
            e = jnp.zeros_like(flat).at[i].set(eps)
            return (f(unravel(flat + e)) - f(unravel(flat - e))) / (2 * eps)

        values = jax.jit(lambda: jax.lax.map(partial, jnp.arange(flat.size),
                                             batch_size=min(batch_size, max(flat.size, 1))))()
        return unravel(values)


def _relative(a: jax.Array, n: jax.Array, tiny: float) -> jax.Array:
    return jnp.linalg.norm(a - n) / jnp.maximum(jnp.maximum(jnp.linalg.norm(a),
                                                            jnp.linalg.norm(n)), tiny)


def _segments(args: tuple, argnums: Sequence[int]) -> tuple[list[str], list[int]]:
    """Names and sizes of the checked leaves, in the order ravel_pytree lays them out."""
    names, sizes = [], []
    for a in argnums:
        for path, leaf in jax.tree_util.tree_flatten_with_path(args[a])[0]:
            names.append(f"args[{a}]{jax.tree_util.keystr(path)}")
            sizes.append(int(np.size(leaf)))
    return names, sizes


def _supports_forward_mode(f_flat: Callable, theta: jax.Array) -> bool:
    """False for functions with a custom_vjp inside: they have no jvp (checked by tracing)."""
    spec = jax.ShapeDtypeStruct(theta.shape, theta.dtype)
    return "custom_vjp" not in str(jax.make_jaxpr(f_flat)(spec))


def _leaf_errors(f: Callable, args: tuple, argnums: tuple, sizes: list[int], mode: str,
                 eps: float, randomness: tuple, num_directions: int, batch_size: int,
                 tiny: float) -> jax.Array:
    """Per-leaf relative errors of JAX's derivatives of f; one program, run under jit.

    Reverse mode (what ``jax.grad`` uses) is checked for every function: with a
    random output cotangent w, the analytic ⟨Jᵀw, u⟩ against the numeric
    ⟨w, (f(θ + εu) − f(θ − εu)) / 2ε⟩. Where f supports forward mode (no
    custom_vjp inside), ⟨w, J u⟩ from ``jvp`` must match too.
    """
    theta, unravel = ravel_pytree(tuple(args[a] for a in argnums))
    n_leaves, total = len(sizes), theta.size

    def f_flat(flat):
        new_args = list(args)
        for a, value in zip(argnums, unravel(flat)):
            new_args[a] = value
        return jnp.asarray(f(*new_args), jnp.float64)

    normals, seed = randomness
    value, pullback = jax.vjp(f_flat, theta)
    w = jax.random.normal(jax.random.key(seed), jnp.shape(value), jnp.float64)
    (reverse,) = pullback(w)  # Jᵀ w
    forward_mode = _supports_forward_mode(f_flat, theta)

    def project(y):
        return jnp.vdot(w, y)

    def numeric_and_forward(u):
        """⟨w, centered difference along u⟩ and ⟨w, J u⟩ (or NaN without forward mode)."""
        if not forward_mode:
            values = jax.vmap(f_flat)(theta + jnp.array([-eps, eps])[:, None] * u)
            return project(values[1] - values[0]) / (2 * eps), jnp.nan
        # one vmapped jvp at θ − εu, θ + εu, θ: the primal outputs give the difference
        points = theta + jnp.array([-eps, eps, 0.0])[:, None] * u
        values, tangents = jax.vmap(lambda p: jax.jvp(f_flat, (p,), (u,)))(points)
        return project(values[1] - values[0]) / (2 * eps), project(tangents[2])

    starts = np.concatenate([[0], np.cumsum(sizes)])
    if mode == "full":  # every coordinate: u = e_i, analytic (Jᵀw)_i
        def coordinate(i):
            return numeric_and_forward(jnp.zeros(total).at[i].set(1.0))

        if total <= batch_size:  # all at once: no loop in the program
            numeric, forward = jax.vmap(coordinate)(jnp.arange(total))
        else:
            numeric, forward = jax.lax.map(coordinate, jnp.arange(total), batch_size=batch_size)
        analytic = reverse
    else:  # num_directions random unit vectors inside each leaf
        lows, highs = jnp.asarray(starts[:-1]), jnp.asarray(starts[1:])
        index = jnp.arange(total)

        def row(r):
            leaf = r // num_directions
            inside = (index >= lows[leaf]) & (index < highs[leaf])
            u = jnp.where(inside, normals[r % num_directions], 0.0)
            u = u / jnp.maximum(jnp.linalg.norm(u), tiny)
            return (*numeric_and_forward(u), jnp.vdot(reverse, u))

        rows = n_leaves * num_directions
        # one row at a time (a plain scan): the least memory traffic
        numeric, forward, analytic = jax.lax.map(row, jnp.arange(rows))
        starts = np.arange(n_leaves + 1) * num_directions
    errors = []
    for s, e in zip(starts[:-1], starts[1:]):
        error = _relative(analytic[s:e], numeric[s:e], tiny)
        if forward_mode:
            error = jnp.maximum(error, _relative(analytic[s:e], forward[s:e], tiny))
        errors.append(error)
    return jnp.stack(errors)


def _validated(owner: str, args: tuple, argnums, mode: str, order: int, eps: float,
               tol: float) -> tuple[int, ...]:
    if mode not in ("full", "directional"):
        raise ValueError(f"{owner}: mode must be 'full' or 'directional'; got {mode!r}.")
    if order not in (1, 2):
        raise ValueError(f"{owner}: order must be 1 or 2; got {order!r}.")
    if not eps > 0 or not tol > 0:
        raise ValueError(f"{owner}: eps and tol must be > 0; got eps={eps}, tol={tol}.")
    if not args:
        raise ValueError(f"{owner}: pass the arguments to differentiate at, e.g. "
                         "check_grads(f, params).")
    argnums = tuple(range(len(args))) if argnums is None else (
        (argnums,) if isinstance(argnums, int) else tuple(argnums))
    if any(not 0 <= a < len(args) for a in argnums):
        raise ValueError(f"{owner}: argnums {argnums} out of range for {len(args)} arguments.")
    return argnums


class _Case(NamedTuple):
    f: Callable
    args: tuple
    argnums: tuple
    names: list
    sizes: list
    normals: np.ndarray


def _prepare(f: Callable, args: tuple, argnums: tuple, mode: str, num_directions: int,
             seed: int) -> _Case:
    args = tuple(_float64(a) for a in args)
    names, sizes = _segments(args, argnums)
    # the random directions are drawn on the host (NumPy, seeded from the key): drawing
    # millions of normals inside the program would add much to its compile time
    normals = (np.random.default_rng(seed).standard_normal((num_directions, sum(sizes)))
               if mode == "directional" else np.zeros((0, 0)))
    return _Case(f, args, argnums, names, sizes, normals)


def _run(cases: list[_Case], mode: str, eps: float, num_directions: int, batch_size: int,
         tiny: float, seed: int) -> list[dict]:
    """Errors of every case, computed by one compiled program."""
    def all_errors(all_args, all_normals):
        return [_leaf_errors(c.f, a, c.argnums, c.sizes, mode, eps, (n, seed), num_directions,
                             batch_size, tiny) if c.names else jnp.zeros(0)
                for c, a, n in zip(cases, all_args, all_normals)]

    values = jax.jit(all_errors)([c.args for c in cases], [c.normals for c in cases])
    out = []
    for case, errors in zip(cases, values):
        errors = np.asarray(errors)
        out.append({name: float(v) if np.isfinite(v) else float("inf")
                    for name, v in zip(case.names, errors)})
    return out


def _seed(key: jax.Array | None) -> int:
    return 0 if key is None else int(np.asarray(jax.random.key_data(key)).ravel()[-1])


def check_grads(f: Callable, *args: Any, argnums: int | Sequence[int] | None = None,
                eps: float = 1e-5, tol: float = 1e-6, mode: str = "full",
                num_directions: int = 2, key: jax.Array | None = None, order: int = 1,
                batch_size: int = 512, tiny: float = 1e-12,
                raise_on_failure: bool = True) -> GradCheckReport:
    """Checks JAX's derivatives of ``f`` against centered finite differences, per leaf.

    For each leaf θ_l of the checked arguments and a random output cotangent w,
    compares reverse mode (``vjp``, what ``jax.grad`` uses), ⟨Jᵀw, u⟩, with the
    centered difference ⟨w, f(θ + εu) − f(θ − εu)⟩ / 2ε along coordinates or
    random unit directions u; where f supports forward mode (no custom_vjp
    inside) also ``jvp``'s ⟨w, J u⟩ (the inner-product identity). Reports
    per leaf the relative error ‖a − n‖ / max(‖a‖, ‖n‖, tiny). Runs in float64.

    Args:
      f: the function; its output may be a scalar or an array.
      *args: its arguments (arrays or pytrees); float leaves are cast to float64.
      argnums: which arguments to check (default: all).
      eps: the finite-difference step ε.
      tol: the largest relative error that passes.
      mode: "full" (every coordinate; small inputs) or "directional" (random
        unit directions; large inputs).
      num_directions: directions per leaf in directional mode.
      key: PRNG key for the directions and the cotangent (default: seed 0).
      order: 1 checks f's derivatives; 2 also checks the derivatives of ``jax.grad(f)``.
      batch_size: coordinates evaluated together in full mode.
      tiny: the smallest denominator of the relative error. A derivative that is
        zero in exact arithmetic (e.g. a bias followed by BatchNorm) still shows
        finite-difference noise of about 1e-16·|f| / ε; raise ``tiny`` above that
        noise / ``tol`` to let such leaves pass.
      raise_on_failure: raise :class:`GradientCheckError` when a leaf fails.

    Returns:
      A :class:`GradCheckReport` with every leaf's error.

    Example:
        >>> report = fnn.gradcheck.check_grads(loss, params, batch, argnums=0)
        >>> report.worst, report.max_error
    """
    return check_grads_many({"": (f, args)}, argnums=argnums, eps=eps, tol=tol, mode=mode,
                            num_directions=num_directions, key=key, order=order,
                            batch_size=batch_size, tiny=tiny,
                            raise_on_failure=raise_on_failure)[""]


def check_grads_many(checks: dict[str, tuple[Callable, tuple]], *,
                     argnums: int | Sequence[int] | None = None, eps: float = 1e-5,
                     tol: float = 1e-6, mode: str = "full", num_directions: int = 2,
                     key: jax.Array | None = None, order: int = 1, batch_size: int = 512,
                     tiny: float = 1e-12,
                     raise_on_failure: bool = True) -> dict[str, GradCheckReport]:
    """:func:`check_grads` of several functions, compiled as one program (much faster
    than one compilation each when the functions are small).

    Args:
      checks: name -> (f, args) with ``args`` a tuple of f's arguments.
      others: as :func:`check_grads`, applied to every check.

    Returns:
      name -> :class:`GradCheckReport`.

    Example:
        >>> reports = fnn.gradcheck.check_grads_many({"dense": (f1, (p1, x)),
        ...                                           "conv": (f2, (p2, x))})
    """
    seed = _seed(key)
    with jax.enable_x64(True):
        cases = []
        for name, (f, args) in checks.items():
            numbers = _validated(f"check_grads{f'[{name!r}]' if name else ''}", tuple(args),
                                 argnums, mode, order, eps, tol)
            cases.append(_prepare(f, tuple(args), numbers, mode, num_directions, seed))
        results = _run(cases, mode, eps, num_directions, batch_size, tiny, seed)
        if order == 2:
            second = {}
            for name, case in zip(checks, cases):
                for a in case.argnums:
                    def gradient(*xs, f=case.f, a=a):
                        return ravel_pytree(jax.grad(f, argnums=a)(*xs))[0]
                    second[(name, a)] = _prepare(gradient, case.args, case.argnums, mode,
                                                 num_directions, seed)
            for (name, a), errors in zip(second, _run(list(second.values()), mode, eps,
                                                      num_directions, batch_size, tiny, seed)):
                results[list(checks).index(name)].update(
                    {f"d/d{p} of grad wrt args[{a}]": v for p, v in errors.items()})
    reports = {name: GradCheckReport(errors, tol, mode) for name, errors in zip(checks, results)}
    if raise_on_failure:
        for report in reports.values():
            if not report.passed:
                raise GradientCheckError(report)
    return reports
