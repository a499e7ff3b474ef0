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
coordinates or directions, where ``tiny`` is by default what the check cannot
resolve (the differences' own error, estimated by repeating them with step 2ε,
and float64 rounding of JAX's values) divided by the tolerance, so a derivative
that is zero in exact arithmetic passes. Everything runs in float64 and as one
compiled program.

Example::

    report = fnn.gradcheck.check_grads(loss, params, batch, argnums=0, mode="directional")
    print(report)          # one row per leaf: error, reverse, forward, fd noise
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._gradcheck_program import as_float64, prepare, run, second_order


class GradCheckReport(NamedTuple):
    """Per-leaf relative errors of a gradient check (paths like ``args[0]['w']``).

    ``errors[path]`` is the larger of ``reverse[path]`` (reverse mode, what
    ``jax.grad`` uses, against finite differences) and ``forward[path]``
    (forward mode; None where f has no jvp, e.g. a custom_vjp inside).
    ``noise[path]`` is the finite differences' own error estimate ‖n(ε) − n(2ε)‖.
    ``passed``, ``worst`` (the path of the largest error) and ``max_error``
    summarize it; ``str(report)`` is a table with the failing leaves marked.
    """

    errors: dict
    tol: float
    mode: str
    reverse: dict | None = None
    forward: dict | None = None
    noise: dict | None = None

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
        lines = [f"{'leaf':{width}}  {'error':>9}  {'reverse':>9}  {'forward':>9}  {'fd noise':>9}"
                 f"  ({self.mode}, tol {self.tol:.0e})"]
        for path, error in self.errors.items():
            values = [error] + [(column or {}).get(path) for column in
                                (self.reverse, self.forward, self.noise)]
            cells = [f"{v:9.2e}" if v is not None else f"{'-':>9}" for v in values]
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
        flat, unravel = ravel_pytree(as_float64(x))
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


# the default tiny: what finite differences and float64 arithmetic cannot resolve, / tol
NOISE_FACTOR = 10.0  # times the differences' own error ‖n(ε) − n(2ε)‖
ROUNDING_FACTOR = 100.0  # times eps_float64 · ‖Jᵀw‖ · √(directions): the analytic side's rounding


def _report(stats: dict, forward_mode: bool, tol: float, mode: str,
            tiny: float | None) -> GradCheckReport:
    """Per-leaf relative errors from the program's norms (see ``_gradcheck_program.STATS``)."""
    reverse, forward, noise = {}, {}, {}
    for path, s in stats.items():
        unresolved = (NOISE_FACTOR * s["noise"] + ROUNDING_FACTOR * np.finfo(np.float64).eps *
                      s["gradient"] * np.sqrt(s["count"]))
        floor = tiny if tiny is not None else max(unresolved / tol, np.finfo(np.float64).tiny)
        reverse[path] = s["reverse_gap"] / max(s["reverse"], s["numeric"], floor)
        forward[path] = (s["forward_gap"] / max(s["forward"], s["numeric"], floor)
                         if forward_mode else None)
        noise[path] = s["noise"]
    # NaN anywhere (f or a derivative gave NaN) is a failure, not a pass
    reverse = {p: e if np.isfinite(e) else np.inf for p, e in reverse.items()}
    forward = {p: (e if np.isfinite(e) else np.inf) if e is not None else None
               for p, e in forward.items()}
    errors = {p: max(reverse[p], forward[p] or 0.0) for p in reverse}
    return GradCheckReport(errors, tol, mode, reverse, forward, noise)


def _merge(first: GradCheckReport, second: GradCheckReport) -> GradCheckReport:
    """The first-order report with the second-order leaves added as ``d/d<leaf> of grad``."""
    def rename(d):
        return {f"d/d{p} of grad": v for p, v in d.items()}
    return first._replace(**{field: {**getattr(first, field), **rename(getattr(second, field))}
                             for field in ("errors", "reverse", "forward", "noise")})


def check_grads(f: Callable, *args: Any, argnums: int | Sequence[int] | None = None,
                eps: float = 1e-5, tol: float = 1e-6, mode: str = "full",
                num_directions: int = 2, key: Any = None, order: int = 1,
                batch_size: int = 512, tiny: float | None = None,
                raise_on_failure: bool = True) -> GradCheckReport:
    """Checks JAX's derivatives of ``f`` against centered finite differences, per leaf.

    For each float leaf θ_l of the checked arguments and directions u inside it
    (every coordinate, or random unit vectors), compares the numeric
    n = ⟨w, f(θ + εu) − f(θ − εu)⟩ / 2ε with reverse mode a = ⟨Jᵀw, u⟩ (what
    ``jax.grad`` computes) and, where f supports forward mode, with ⟨w, J u⟩
    from ``jvp``; w = 1 for a scalar f. Reports per leaf the relative error
    ‖a − n‖ / max(‖a‖, ‖n‖, tiny), in float64.

    A derivative that is zero in exact arithmetic (the bias of a Dense followed
    by BatchNorm) is rounding noise on both sides, so a purely relative error
    would fail it. By default ``tiny`` is therefore set per leaf to what the
    check cannot resolve, divided by tol: 10 ‖n(ε) − n(2ε)‖ (the differences'
    own error) + 100 · 2.2e-16 · ‖Jᵀw‖ · √k (rounding of the k analytic
    values). A leaf then passes when JAX agrees with the differences to ``tol``
    relative, or to within that resolution.

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
      tiny: the smallest denominator of the relative error; None (default)
        derives it per leaf from the differences' own error, as above.
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
                     tiny: float | None = None,
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
    if tiny is not None and not (isinstance(tiny, (int, float)) and tiny > 0):
        raise ValueError(f"check_grads: tiny must be a number > 0 or None; got {tiny!r}.")
    settings = dict(mode=mode, eps=eps, batch_size=batch_size, seed=seed)
    with jax.enable_x64(True):
        cases = []
        for name, check in checks.items():
            owner = f"check_grads[{name!r}]" if name else "check_grads"
            if not (isinstance(check, tuple) and len(check) == 2):
                raise TypeError(f"{owner}: expected (f, args); got {check!r}.")
            f, args = check
            args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
            numbers = _validated(owner, f, args, argnums, mode, order, eps, tol, num_directions)
            cases.append(prepare(f, args, numbers, mode, num_directions, seed))
            if not cases[-1].names:
                raise ValueError(f"{owner}: no float leaves to check in the arguments {numbers} "
                                 "(integer and boolean leaves are held fixed).")
        if order == 2:
            cases += [prepare(second_order(c, seed), c.args, c.argnums, mode, num_directions,
                               seed) for c in cases]
        results = [_report(stats, forward_mode, tol, mode, tiny)
                   for stats, forward_mode in run(cases, **settings)]
        if order == 2:
            n = len(checks)
            results = [_merge(first, second) for first, second in zip(results[:n], results[n:])]
    reports = dict(zip(checks, results))
    if raise_on_failure:
        for name, report in reports.items():
            if not report.passed:
                raise GradientCheckError(report, name)
    return reports


__all__ = ["GradCheckReport", "GradientCheckError", "check_grads", "check_grads_many",
           "numerical_grad"]
