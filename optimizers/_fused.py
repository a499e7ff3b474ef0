"""One-pass optimizer kernels for float32 leaves on the CPU: coefficients and formulas.

Why: XLA:CPU has no multi-output loop fusion, so a jitted optimizer step becomes
one loop per output (the param and each moment), each re-reading the gradient:
Adam moves ~40 bytes per param where one pass needs 28. Pure-JAX rewrites
(chunked loops, interleaved layouts, scans; see the README) measured slower, so
the steps of Adam/AdamW, AdaGrad/RMSProp and Momentum are small C++ kernels
(``_kernels/steps.cc``) registered with JAX's own extension mechanism,
``jax.ffi``, that update the params and moments in place. The kernels are the
multi-tensor ones: one call steps a whole list of leaves (:mod:`optimizers._multi`
makes the calls and holds their fallbacks: off the CPU, under ``vmap``, for
derivatives, sharded under ``jax.jit`` and inside ``jax.shard_map``). In C++ each
rule is one per-range function (``AdamRange``, ``ScaledRange``, ``MomentumRange``)
that every piece of every call runs.

This module holds what the kernels and their callers share: the float32
coefficient vectors (``*_coefficients``), the jnp formulas that define the kernels
and stand in for them where they cannot run (``*_reference``), and the
eligibility check of a leaf (:func:`eligible`). The optimizers pass
``fused=(coefficients, multi_step)`` to ``from_rule``; only ``optimizers.step``
runs a kernel, ``update`` always returns the rule's update.

The kernels are compiled with the system C++ compiler when the first CPU
program with a step is lowered, cached in ``$FNN_CACHE_DIR`` (default
``$XDG_CACHE_HOME/fnn`` or ``~/.cache/fnn``) and loaded only after ownership, mode
and content-hash checks (:mod:`optimizers._native`). Where that fails the same
formulas run as XLA code after one warning; ``FNN_FUSED=0`` runs the plain rule and
builds nothing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _native
from ._native import STEP_TARGETS, available  # noqa: F401 - the step kernels; tests ask available()

_FLOAT32 = np.dtype(np.float32)
# Elements per task when a kernel call splits its leaves over the thread pool (kChunk in
# _kernels/steps.cc); tests size leaves around it.
CHUNK = 1 << 16


def eligible(g: Any, p: Any, *moments: Any) -> bool:
    """A leaf the kernels take: float32 gradient, param and moments of one shape (any size).

    Decided at trace time from the arrays' dtype and shape attributes alone (no jnp call:
    it runs for every leaf of every step's trace), without building anything (the kernels
    are built when a CPU program is lowered); False for every leaf when ``FNN_FUSED=0``.
    """
    if p is None:
        return False
    shape = getattr(p, "shape", None)
    return (all(getattr(x, "dtype", None) == _FLOAT32 and getattr(x, "shape", None) == shape
                for x in (g, p, *moments))
            and shape is not None
            and _native.enabled())


# ------------------------------------------------------------------- coefficients and formulas


def adam_coefficients(count, learning_rate, b1, b2, eps, weight_decay=0.0,
                      bias_correction=True) -> jax.Array:
    """The kernel's scalars: [b1, 1 − b1, b2, 1 − b2, step, 1/√c₂, eps, decay] (float32).

    step = η / (1 − β₁ᵗ) and c₂ = 1 − β₂ᵗ with bias correction (else η and 1);
    decay = η λ.
    """
    b1, b2 = jnp.asarray(b1, jnp.float32), jnp.asarray(b2, jnp.float32)
    lr = jnp.asarray(learning_rate, jnp.float32)
    if bias_correction:
        t = count.astype(jnp.float32)
        step, inv_sqrt_c2 = lr / (1 - b1**t), jax.lax.rsqrt(1 - b2**t)
    else:
        step, inv_sqrt_c2 = lr, jnp.ones((), jnp.float32)
    decay = lr * jnp.asarray(weight_decay, jnp.float32)
    return _float32_vector(b1, 1 - b1, b2, 1 - b2, step, inv_sqrt_c2, eps, decay)


def scaled_coefficients(keep, add, learning_rate, eps, eps_in_sqrt: bool) -> jax.Array:
    """AdaGrad's (keep = add = 1) and RMSProp's (keep = ρ, add = 1 − ρ) scalars."""
    return _float32_vector(keep, add, learning_rate, eps, 1.0 if eps_in_sqrt else 0.0)


def momentum_coefficients(momentum, learning_rate, nesterov: bool) -> jax.Array:
    """Momentum's scalars: [μ, η, nesterov]."""
    return _float32_vector(momentum, learning_rate, 1.0 if nesterov else 0.0)


def _float32_vector(*values) -> jax.Array:
    return jnp.stack([jnp.asarray(x, jnp.float32) for x in values])


def _columns(coef, n):
    return (coef[..., i] for i in range(n))


def divide_or_zero(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator, and 0 where the denominator is 0.

    With ε = 0 a coordinate whose gradient was always 0 gives 0/0; its update is
    defined as the limit, 0 (not NaN). One select (x / ∞ = 0), so it costs no
    extra pass, and derivatives stay finite. A NaN denominator stays NaN.
    """
    return numerator / jnp.where(denominator == 0, jnp.inf, denominator)


def rsqrt_or_zero(x: jax.Array) -> jax.Array:
    """1/√x, and 0 where x is 0 (see :func:`divide_or_zero`)."""
    return jax.lax.rsqrt(jnp.where(x == 0, jnp.inf, x))


def adam_reference(coef, g, p, m, v):
    """The Adam kernel's formula in jnp: (p_new, m_new, v_new); no step where the
    denominator is 0 (ε = 0 and zero gradients)."""
    b1, k1, b2, k2, step, inv_sqrt_c2, eps, decay = _columns(coef, 8)
    m = b1 * m + k1 * g
    v = b2 * v + k2 * g * g
    return p - step * divide_or_zero(m, jnp.sqrt(v) * inv_sqrt_c2 + eps) - decay * p, m, v


def scaled_reference(coef, g, p, s):
    """The AdaGrad/RMSProp kernel's formula in jnp: (p_new, s_new); no step where the
    denominator is 0."""
    keep, add, lr, eps, eps_in_sqrt = _columns(coef, 5)
    s = keep * s + add * g * g
    denominator = jnp.where(eps_in_sqrt != 0, jnp.sqrt(s + eps), jnp.sqrt(s) + eps)
    return p - lr * divide_or_zero(g, denominator), s


def momentum_reference(coef, g, p, u):
    """The Momentum kernel's formula in jnp: (p_new, u_new)."""
    mu, lr, nesterov = _columns(coef, 3)
    u = mu * u + g
    return p - lr * jnp.where(nesterov != 0, g + mu * u, u), u
