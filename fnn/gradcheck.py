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
that is zero in exact arithmetic passes; each coordinate is also compared
within its own resolution, so one noisy coordinate does not loosen the others.
A coordinate (or direction) whose differences do not settle (n(ε) and n(2ε)
disagree by more than the tolerance allows: f jumps or has a kink within 2ε)
is *unresolvable*: reported by leaf and index, and a failure unless
``unresolvable="ignore"``, never a pass. Everything runs in float64 and as one
compiled program.

Example::

    report = fnn.gradcheck.check_grads(loss, params, batch, argnums=0, mode="directional")
    print(report)          # one row per leaf: error, reverse, forward, fd noise
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._gradcheck_program import as_float64, leaf_errors, prepare, run, second_order


class GradCheckReport(NamedTuple):
    """Per-leaf relative errors of a gradient check (paths like ``args[0]['w']``).

    ``errors[path]`` is the larger of ``reverse[path]`` (reverse mode, what
    ``jax.grad`` uses, against finite differences) and ``forward[path]``
    (forward mode; None where f has no jvp, e.g. a custom_vjp inside).
    ``noise[path]`` is the finite differences' own error estimate ‖n(ε) − n(2ε)‖.
    ``unresolvable[path]`` lists the coordinates (index tuples; in directional
    mode, direction numbers) where the differences do not settle, each as
    ``(index, n(ε), n(2ε), JAX's value)``; they are left out of the errors and
    fail the check unless ``on_unresolvable == "ignore"``.
    ``passed``, ``worst`` (the path of the largest error) and ``max_error``
    summarize it; ``str(report)`` is a table with the failing leaves marked.
    """

    errors: dict
    tol: float
    mode: str
    reverse: dict | None = None
    forward: dict | None = None
    noise: dict | None = None
    unresolvable: dict | None = None
    on_unresolvable: str = "raise"

    @property
    def worst(self) -> str:
        return max(self.errors, key=self.errors.get) if self.errors else "(no leaves)"

    @property
    def max_error(self) -> float:
        return max(self.errors.values()) if self.errors else 0.0

    @property
    def unresolved(self) -> dict:
        """path -> its unresolvable coordinates, for the leaves that have any."""
        return {path: rows for path, rows in (self.unresolvable or {}).items() if rows}

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tol and (self.on_unresolvable == "ignore" or
                                               not self.unresolved)

    def __str__(self) -> str:
        width = max([len(p) for p in self.errors] + [4])
        lines = [f"{'leaf':{width}}  {'error':>9}  {'reverse':>9}  {'forward':>9}  {'fd noise':>9}"
                 f"  ({self.mode}, tol {self.tol:.0e})"]
        unresolved = self.unresolved
        for path, error in self.errors.items():
            values = [error] + [(column or {}).get(path) for column in
                                (self.reverse, self.forward, self.noise)]
            cells = [f"{v:9.2e}" if v is not None else f"{'-':>9}" for v in values]
            flag = "" if error <= self.tol else "  <-- FAIL"
            if path in unresolved:
                skipped = " (skipped)" if self.on_unresolvable == "ignore" else ""
                flag += f"  <-- {len(unresolved[path])} unresolvable{skipped}"
            lines.append(f"{path:{width}}  {'  '.join(cells)}{flag}")
        return "\n".join(lines)


def _describe_unresolvable(report: GradCheckReport) -> str:
    """The first unresolvable coordinate of each leaf, with its numbers."""
    where = "direction" if report.mode == "directional" else "index"
    lines = []
    for path, rows in report.unresolved.items():
        index, numeric, numeric2, analytic = rows[0]
        more = f" and {len(rows) - 1} more" if len(rows) > 1 else ""
        lines.append(f"{path} at {where} {index}{more}: n(eps) = {numeric:.6g}, n(2 eps) = "
                     f"{numeric2:.6g}, JAX's derivative {analytic:.6g}")
    return "; ".join(lines)


class GradientCheckError(AssertionError):
    """A gradient check failed; ``report`` holds every leaf's error, the message the worst."""

    def __init__(self, report: GradCheckReport, name: str = ""):
        where = f" of {name!r}" if name else ""
        reasons = []
        if report.max_error > report.tol or not report.unresolved:
            reasons.append(f"{report.worst} has relative error {report.max_error:.3e} > tol "
                           f"{report.tol:.1e}")
        if report.unresolved and report.on_unresolvable != "ignore":
            reasons.append(
                "centered differences do not converge (f is not differentiable within 2 eps "
                "of the point: a jump or a kink, or not finite there, or it curves too fast "
                f"for this eps) at {_describe_unresolvable(report)}; move the point or change "
                "eps, or pass unresolvable='ignore' to skip such coordinates")
        super().__init__(f"gradient check{where} failed: {'; and '.join(reasons)}\n{report}")
        self.report = report


def _number(owner: str, name: str, value: Any, *, allow_none: bool = False) -> float | None:
    """``value`` as a finite float > 0, or a TypeError/ValueError naming the argument."""
    if value is None and allow_none:
        return None
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{owner}: {name} must be a concrete number; got a traced value "
                        "(the check runs its own compiled program: call it outside jax.jit, "
                        "jax.vmap and jax.grad).")
    is_scalar_array = (isinstance(value, (jax.Array, np.ndarray, np.generic)) and
                       np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.number)
                       and not np.issubdtype(np.asarray(value).dtype, np.complexfloating))
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) or is_scalar_array):
        expected = "a number > 0 or None" if allow_none else "a number > 0"
        raise TypeError(f"{owner}: {name} must be {expected}; got {type(value).__name__} "
                        f"{value!r}.")
    number = float(np.asarray(value))
    if not (number > 0 and np.isfinite(number)):
        raise ValueError(f"{owner}: {name} must be a finite number > 0; got {value!r}.")
    return number


def _count(owner: str, name: str, value: Any) -> int:
    """``value`` as an int >= 1, or a TypeError/ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner}: {name} must be an int >= 1; got {type(value).__name__} "
                        f"{value!r}.")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be an int >= 1; got {value!r}.")
    return int(value)


def _check_leaves(owner: str, args: Any, name: str = "args", *,
                  floats_only: bool = False) -> None:
    """Every leaf a real array or number (float leaves only if ``floats_only``; concrete unless
    ``floats_only``: :func:`numerical_grad` also works inside a trace)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
        where = f"{name}{jax.tree_util.keystr(path)}"
        if isinstance(leaf, jax.core.Tracer) and not floats_only:
            raise TypeError(f"{owner}: {where} is a traced value; the check runs its own "
                            "compiled program and returns Python floats: call it outside "
                            "jax.jit, jax.vmap and jax.grad, on concrete arrays.")
        try:
            dtype = jnp.result_type(leaf)
        except TypeError:
            dtype = None
        if dtype is None or isinstance(leaf, str) or not (
                jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
                or jnp.issubdtype(dtype, jnp.bool_)):
            kind = f"dtype {dtype}" if dtype is not None and not isinstance(leaf, str) else \
                type(leaf).__name__
            raise TypeError(f"{owner}: {where} must be a real array or number; got {kind}: "
                            f"{leaf!r:.60}.")
        if floats_only and not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{owner}: {where} must be a float array (the point to "
                            f"differentiate at); got dtype {dtype}: cast it, e.g. "
                            "x.astype(float).")


def numerical_grad(f: Callable, x: Any, eps: float = 1e-5, batch_size: int = 512) -> Any:
    """The gradient of a scalar ``f`` at ``x`` by centered differences, in float64.

    ∂f/∂xᵢ ≈ (f(x + ε eᵢ) − f(x − ε eᵢ)) / 2ε for every coordinate i: the 2n
    evaluations are vmapped over the perturbation directions (in chunks of
    ``batch_size`` directions under ``lax.map``), not a Python loop.

    Args:
      f: a function of ``x`` returning a scalar, finite at ``x``.
      x: a float array or a pytree of float arrays (cast to float64).
      eps: the step ε, a finite number > 0.
      batch_size: directions evaluated together, >= 1.

    Returns:
      The gradient, with the structure of ``x`` (float64).

    Raises:
      TypeError: f is not callable, x has non-float leaves, or f's output is
        not real. ValueError: f's output is not a scalar, or is not finite at
        x (checked when x is concrete; inside ``jax.jit``/``vmap``/``grad`` the
        check is skipped and a NaN of f shows in the result).

    Example:
        >>> fnn.gradcheck.numerical_grad(lambda x: jnp.sum(x ** 3), jnp.ones(3))   # ≈ [3, 3, 3]
    """
    owner = "numerical_grad"
    if not callable(f):
        raise TypeError(f"{owner}: f must be a function; got {f!r}.")
    eps = _number(owner, "eps", eps)
    batch_size = _count(owner, "batch_size", batch_size)
    _check_leaves(owner, x, "x", floats_only=True)
    with jax.enable_x64(True):
        flat, unravel = ravel_pytree(as_float64(x))

        def value(t):
            out = f(unravel(t))
            if getattr(out, "shape", None) != () or not jnp.issubdtype(
                    getattr(out, "dtype", np.float64), jnp.floating):
                shape = getattr(out, "shape", None)
                described = (f"an array of shape {shape} and dtype {out.dtype}" if shape is not
                             None else f"{type(out).__name__} {out!r:.60}")
                raise ValueError(f"{owner}: f must return a float scalar (a loss); got "
                                 f"{described}.")
            return jnp.asarray(out, jnp.float64)

        def partial(i):
            e = jnp.zeros_like(flat).at[i].set(eps)
            return (value(flat + e) - value(flat - e)) / (2 * eps)

        size = max(flat.size, 1)
        values, at_x = jax.jit(lambda: (jax.lax.map(partial, jnp.arange(flat.size),
                                                    batch_size=min(batch_size, size)),
                                        value(flat)))()
        # the check reads a value: only a concrete one (inside a trace f's NaN stays visible)
        if not isinstance(at_x, jax.core.Tracer) and not np.isfinite(float(at_x)):
            raise ValueError(f"{owner}: f(x) is {float(at_x)}; the gradient by differences "
                             "needs f finite at x.")
        return unravel(values.astype(jnp.float64))


# ------------------------------------------------------------------ the public checks


UNRESOLVABLE = ("raise", "ignore")


def _validated(owner: str, f: Any, args: tuple, argnums: Any) -> tuple[int, ...]:
    """The sorted argument numbers to check, after checking f, args and argnums."""
    if not callable(f):
        raise TypeError(f"{owner}: f must be a function; got {f!r}.")
    if not args:
        raise ValueError(f"{owner}: pass the arguments to differentiate at, e.g. "
                         "check_grads(f, params).")
    _check_leaves(owner, args)
    valid = f"ints from 0 to {len(args) - 1} (f gets {len(args)} arguments)"
    if argnums is None:
        return tuple(range(len(args)))
    numbers = (argnums,) if isinstance(argnums, (int, np.integer)) else argnums
    try:
        numbers = tuple(numbers)
    except TypeError:
        numbers = None
    if not numbers or any(isinstance(a, bool) or not isinstance(a, (int, np.integer))
                          for a in numbers):
        raise TypeError(f"{owner}: argnums must be an int or a non-empty sequence of {valid}; "
                        f"got {argnums!r}.")
    if any(not 0 <= a < len(args) for a in numbers):
        raise ValueError(f"{owner}: argnums {argnums!r} out of range: expected {valid}.")
    return tuple(sorted({int(a) for a in numbers}))


def _settings(owner: str, mode: Any, order: Any, eps: Any, tol: Any, num_directions: Any,
              batch_size: Any, tiny: Any, unresolvable: Any) -> tuple:
    """The checked (eps, tol, num_directions, batch_size, tiny); errors name the argument."""
    if not isinstance(mode, str) or mode not in ("full", "directional"):
        raise ValueError(f"{owner}: mode must be 'full' or 'directional'; got {mode!r}.")
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"{owner}: order must be 1 or 2; got {order!r}.")
    if not isinstance(unresolvable, str) or unresolvable not in UNRESOLVABLE:
        raise ValueError(f"{owner}: unresolvable must be 'raise' or 'ignore'; "
                         f"got {unresolvable!r}.")
    return (_number(owner, "eps", eps), _number(owner, "tol", tol),
            _count(owner, "num_directions", num_directions),
            _count(owner, "batch_size", batch_size),
            _number(owner, "tiny", tiny, allow_none=True))


def _seed(owner: str, key: Any) -> int:
    """A non-negative int seed from ``key``: None (0), an int, or a PRNG key."""
    if key is None:
        return 0
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return int(key) % 2**62
    dtype = getattr(key, "dtype", None)
    if isinstance(key, (jax.Array, np.ndarray)) and not isinstance(key, jax.core.Tracer):
        if jnp.issubdtype(dtype, jax.dtypes.prng_key) and key.shape == ():
            data = np.asarray(jax.random.key_data(key))
        elif dtype == np.uint32 and key.shape == (2,):  # a legacy raw key
            data = np.asarray(key)
        else:
            data = None
        if data is not None:
            weights = np.arange(data.size, dtype=np.uint64) + 1
            return int(np.ravel(data).astype(np.uint64) @ weights) % 2**62
    described = (f"an array of dtype {dtype} and shape {tuple(key.shape)}" if dtype is not None
                 else f"{type(key).__name__} {key!r:.40}")
    raise TypeError(f"{owner}: key must be a PRNG key (e.g. jax.random.key(0)), an int seed "
                    f"or None; got {described}.")


def _report(case: Any, rows: Any, *, mode: str, eps: float, tol: float, tiny: float | None,
            on_unresolvable: str) -> GradCheckReport:
    """A case's report from the program's rows (see ``_gradcheck_program.leaf_errors``)."""
    leaves = leaf_errors(case, rows, mode=mode, eps=eps, tol=tol, tiny=tiny)
    reverse = {p: r.reverse for p, r in leaves.items()}
    forward = {p: r.forward for p, r in leaves.items()}
    errors = {p: max(reverse[p], forward[p] or 0.0) for p in leaves}
    return GradCheckReport(errors, tol, mode, reverse, forward,
                           {p: r.noise for p, r in leaves.items()},
                           {p: r.unresolvable for p, r in leaves.items()}, on_unresolvable)


def _merge(first: GradCheckReport, second: GradCheckReport) -> GradCheckReport:
    """The first-order report with the second-order leaves added as ``d/d<leaf> of grad``."""
    def rename(d):
        return {f"d/d{p} of grad": v for p, v in d.items()}
    return first._replace(**{field: {**getattr(first, field), **rename(getattr(second, field))}
                             for field in ("errors", "reverse", "forward", "noise",
                                           "unresolvable")})


def check_grads(f: Callable, *args: Any, argnums: int | Sequence[int] | None = None,
                eps: float = 1e-5, tol: float = 1e-6, mode: str = "full",
                num_directions: int = 2, key: Any = None, order: int = 1,
                batch_size: int = 512, tiny: float | None = None,
                unresolvable: str = "raise",
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
    check cannot resolve, divided by tol: ‖r‖ with rᵢ = 10 |nᵢ(ε) − nᵢ(2ε)|
    (the differences' own error; at least the leaf's lower median) + 100 ·
    2.2e-16 · ‖Jᵀw‖ (rounding of the analytic values); and each coordinate i
    must also satisfy |aᵢ − nᵢ| ≤ tol · max(‖a‖, ‖n‖, rᵢ / tol), so a noisy
    coordinate does not loosen the others. A leaf then passes when JAX agrees
    with the differences to ``tol`` relative, or to within that resolution.

    A coordinate (a direction, in directional mode) is *unresolvable* when
    |n(ε) − n(2ε)| > tol · ‖Jᵀw‖ + 100 · 2.2e-16 · ⟨|w|, |f(θ)|⟩ / ε or n is
    not finite: f jumps, has a kink or is not finite within 2ε of the point, or
    curves too fast for this ε. Such coordinates are left out of the errors
    and listed in ``report.unresolvable`` by leaf and index; they fail the
    check (``unresolvable="raise"``, the default) or are skipped ("ignore").

    Args:
      f: the function; its output may be a scalar, an array or a pytree of real
        arrays, and must be finite at ``args``.
      *args: its arguments (arrays or pytrees); float leaves are cast to float64,
        integer leaves (labels) are held fixed and not checked.
      argnums: which positional arguments to check (default: all).
      eps: the finite-difference step ε, a finite number > 0.
      tol: the largest relative error that passes, a finite number > 0.
      mode: "full" (every coordinate; small inputs) or "directional"
        (``num_directions`` random unit directions per leaf; millions of params).
      num_directions: directions per leaf in directional mode, >= 1.
      key: a PRNG key or int seeding the directions (default: seed 0).
      order: 1 checks f's derivatives; 2 also checks the derivatives of its
        gradient θ ↦ Jᵀw, reported as ``"d/d<leaf> of grad"``.
      batch_size: coordinates evaluated together (vmapped) in full mode, >= 1.
      tiny: the smallest denominator of the relative error (then with no
        per-coordinate resolution); None (default) derives it as above.
      unresolvable: "raise" (default: unresolvable coordinates fail the check)
        or "ignore" (they are reported and skipped).
      raise_on_failure: raise :class:`GradientCheckError` when a leaf fails.

    Returns:
      A :class:`GradCheckReport` with every leaf's error.

    Raises:
      GradientCheckError: a leaf's error exceeds ``tol``, or (by default) a
        coordinate is unresolvable; the message names the leaf and index.
      TypeError, ValueError: a bad argument (named), f not finite at ``args``,
        or ``args`` traced (call the check outside ``jax.jit``/``vmap``/``grad``).

    Example:
        >>> report = fnn.gradcheck.check_grads(loss, params, batch, argnums=0)
        >>> report.worst, report.max_error
        >>> fnn.gradcheck.check_grads(loss, params, batch, argnums=0, mode="directional")
    """
    return check_grads_many({"": (f, args)}, argnums=argnums, eps=eps, tol=tol, mode=mode,
                            num_directions=num_directions, key=key, order=order,
                            batch_size=batch_size, tiny=tiny, unresolvable=unresolvable,
                            raise_on_failure=raise_on_failure)[""]


def check_grads_many(checks: dict[str, tuple[Callable, tuple]], *,
                     argnums: int | Sequence[int] | None = None, eps: float = 1e-5,
                     tol: float = 1e-6, mode: str = "full", num_directions: int = 2,
                     key: Any = None, order: int = 1, batch_size: int = 512,
                     tiny: float | None = None, unresolvable: str = "raise",
                     raise_on_failure: bool = True) -> dict[str, GradCheckReport]:
    """:func:`check_grads` of several functions, compiled as one program.

    Args:
      checks: name -> (f, args) with ``args`` the tuple of f's arguments.
      argnums, eps, tol, mode, num_directions, key, order, batch_size, tiny,
        unresolvable, raise_on_failure: as :func:`check_grads`, applied to
        every check.

    Returns:
      name -> :class:`GradCheckReport`.

    Example:
        >>> reports = fnn.gradcheck.check_grads_many({"dense": (f1, (p1, x)),
        ...                                           "conv": (f2, (p2, x))})
    """
    if not isinstance(checks, dict):
        raise TypeError(f"check_grads_many: checks must be a dict name -> (f, args); "
                        f"got {type(checks).__name__}.")
    owner = "check_grads" if list(checks) == [""] else "check_grads_many"
    eps, tol, num_directions, batch_size, tiny = _settings(
        owner, mode, order, eps, tol, num_directions, batch_size, tiny, unresolvable)
    seed = _seed(owner, key)
    settings = dict(mode=mode, eps=eps, batch_size=batch_size, seed=seed)
    with jax.enable_x64(True):
        cases = []
        for name, check in checks.items():
            owner = f"check_grads[{name!r}]" if name else "check_grads"
            if not (isinstance(check, tuple) and len(check) == 2):
                raise TypeError(f"{owner}: expected (f, args); got {check!r}.")
            f, args = check
            args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
            numbers = _validated(owner, f, args, argnums)
            cases.append(prepare(f, args, numbers, mode, num_directions, seed, owner))
            if not cases[-1].names:
                raise ValueError(f"{owner}: no float leaves to check in the arguments {numbers} "
                                 "(integer and boolean leaves are held fixed).")
        if order == 2:
            cases += [prepare(second_order(c, seed), c.args, c.argnums, mode, num_directions,
                              seed, c.owner) for c in cases]
        all_rows = run(cases, **settings)
        for case, rows in zip(cases, all_rows):
            if not np.isfinite(rows.magnitude):
                raise ValueError(f"{case.owner}: f is not finite at the given arguments (an "
                                 "output is nan or inf); a gradient check needs a finite value "
                                 "there.")
        results = [_report(case, rows, mode=mode, eps=eps, tol=tol, tiny=tiny,
                           on_unresolvable=unresolvable) for case, rows in zip(cases, all_rows)]
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
