"""One-pass optimizer kernels for float32 leaves on the CPU: coefficients, formulas, steps.

Why: XLA:CPU has no multi-output loop fusion, so a jitted optimizer step becomes
one loop per output (the param and each moment), each re-reading the gradient:
Adam moves ~40 bytes per param where one pass needs 28. Pure-JAX rewrites
(chunked loops, interleaved layouts, scans; see the README) measured slower, so
the steps of Adam/AdamW, AdaGrad/RMSProp and Momentum are small C++ kernels
(``_kernels/steps.cc``) registered with JAX's own extension mechanism,
``jax.ffi``, that update the param and moments in place.

This module holds what every kernel shares: the float32 coefficient vectors
(``*_coefficients``), the jnp formulas that define the kernels and stand in for
them off the CPU, under ``vmap`` and for derivatives (``*_reference``), and the
single-leaf steps (``adam_step``, ``scaled_step``, ``momentum_step``), the
reference the multi-tensor steps of :mod:`optimizers._multi` are tested against.
The optimizers pass ``fused=(coefficients, multi_step)`` to ``from_rule``; only
``optimizers.step`` runs a kernel, ``update`` always returns the rule's update.

Sharded params: under ``jax.jit`` with sharded arrays, the kernel call is wrapped in
``custom_partitioning`` (elementwise: each device steps its own shard, nothing is
gathered). Inside ``jax.shard_map`` each device's leaves are its local blocks, so
a leaf takes the kernel when its *block* has at least :data:`MIN_SIZE` elements,
and the kernel steps that block in place. There every value's type also records
the mesh axes it varies over (its vma: a param passed with ``P('d')`` varies over
``'d'``, a replicated one does not). The formula is elementwise, so its results
vary over the union of the operands' axes; the operands are cast to that union
first (:func:`optimizers._vma.varying_alike`, no data moves), so the kernel's
results, typed like ``p``, have the type ``lax.platform_dependent`` needs from
both branches, whatever mix of sharded and replicated gradient, param and moments
is passed, and whichever platform the program is lowered for.

The kernels are compiled with the system C++ compiler when the first CPU
program with a step is lowered, cached in ``$FNN_CACHE_DIR`` (default
``~/.cache/fnn``) and loaded only after ownership, mode and content-hash checks
(:mod:`optimizers._native`). Where that fails the same formulas run as XLA code
after one warning; ``FNN_FUSED=0`` runs the plain rule and builds nothing.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from . import _native, _vma
from ._native import STEP_TARGETS, available  # noqa: F401 - the step kernels; tests ask available()

_FLOAT32 = np.dtype(np.float32)
MIN_SIZE = 1 << 16  # smaller leaves: XLA's fused loops are as fast and need no custom call


def eligible(g: Any, p: Any, *moments: Any, min_size: int = MIN_SIZE) -> bool:
    """A leaf the kernels take: float32 gradient, param and moments of one shape, ≥
    ``min_size`` elements (the multi-tensor kernels of :mod:`optimizers._multi` take any
    size: ``min_size=0``).

    Decided at trace time from the arrays' dtype and shape attributes alone (no jnp call:
    it runs for every leaf of every step's trace), without building anything (the kernels
    are built when a CPU program is lowered); False for every leaf when ``FNN_FUSED=0``.
    """
    if p is None:
        return False
    shape = getattr(p, "shape", None)
    return (all(getattr(x, "dtype", None) == _FLOAT32 and getattr(x, "shape", None) == shape
                for x in (g, p, *moments))
            and math.prod(shape) >= min_size
            and _native.enabled())


# --------------------------------------------------------------------------- the step


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


def _one_pass(target: str, reference, moments: int):
    """``step(coef, g, p, *moments) -> (p_new, *moments_new)``: the kernel ``target`` on the
    CPU, ``reference`` elsewhere, under vmap and for derivatives."""
    outputs = 1 + moments
    # In place (the outputs alias p and the moments): donate them, or XLA copies them
    # first. Built when first lowered for the CPU; the reference formula where it cannot be.
    kernel = _native.kernel_call(target, reference, outputs)

    # Elementwise, so on sharded arrays each device steps its own shard: without
    # this rule the partitioner would gather every array onto every device.
    fixed = {1: lambda coef, g, p, a: kernel(coef, g, p, a),
             2: lambda coef, g, p, a, b: kernel(coef, g, p, a, b)}[moments]
    sharded = custom_partitioning(fixed)

    def same_sharding(mesh, arg_shapes, result_shape):
        return (arg_shapes[2].sharding,) * outputs

    def partition(mesh, arg_shapes, result_shape):
        shard = arg_shapes[2].sharding
        replicated = NamedSharding(mesh, PartitionSpec())
        return mesh, fixed, (shard,) * outputs, (replicated,) + (shard,) * (1 + outputs)

    sharded.def_partition(
        partition=partition, infer_sharding_from_operands=same_sharding,
        sharding_rule=f"c, {', '.join(['...'] * (1 + outputs))} -> {', '.join(['...'] * outputs)}",
        need_replication_factors=("c",))

    @custom_batching.custom_vmap
    def kernel_or_reference(coef, g, p, *state):
        return tuple(jax.lax.platform_dependent(coef, g, p, *state, cpu=sharded,
                                                default=reference))

    @kernel_or_reference.def_vmap
    def batched(axis_size, in_batched, coef, g, p, *state):
        # Under vmap (e.g. many learning rates at once) coefficients differ per model:
        # run the jnp formula, batched, instead of the kernel.
        args = [x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
                for x, b in zip((coef, g, p, *state), in_batched)]
        coef = args[0].reshape(axis_size, *([1] * (args[2].ndim - 1)), args[0].shape[-1])
        return reference(coef, *args[1:]), (True,) * outputs

    @jax.custom_jvp
    def differentiable(coef, g, p, *state):
        return kernel_or_reference(coef, g, p, *state)

    differentiable.defjvp(lambda primals, tangents: jax.jvp(reference, primals, tangents))

    def step(coef, g, p, *state):
        # Inside shard_map every output varies over the manual axes that any input varies
        # over (the formula is elementwise), and both branches of platform_dependent must
        # say so: the kernel's outputs are typed like p, so give every operand that type.
        return differentiable(*_vma.varying_alike(coef, g, p, *state))

    return step


adam_step = _one_pass("fnn_adam_f32", adam_reference, 2)
adam_step.__doc__ = "One Adam step of a float32 leaf, one pass on the CPU: (p, m, v) new."
scaled_step = _one_pass("fnn_scaled_f32", scaled_reference, 1)
scaled_step.__doc__ = "One AdaGrad/RMSProp step of a float32 leaf: (p, s) new."
momentum_step = _one_pass("fnn_momentum_f32", momentum_reference, 1)
momentum_step.__doc__ = "One Momentum step of a float32 leaf: (p, u) new."
