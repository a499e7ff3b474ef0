"""Variance scaling, and the named initializers that are one call of it.

Xavier/Glorot, He/Kaiming, LeCun and fan-in uniform all draw weights with
variance σ² = scale / n, n being fan_in, fan_out or their mean (fans by
:func:`init.compute_fans`); they differ only in (scale, mode, distribution):

====================  =====================  ========  ============
initializer           scale                  mode      distribution
====================  =====================  ========  ============
xavier_uniform(g)     g²                     fan_avg   uniform
xavier_normal(g)      g²                     fan_avg   normal
he_uniform(a, mode)   2 / (1 + a²)           fan_in    uniform
he_normal(a, mode)    2 / (1 + a²)           fan_in    normal
lecun_uniform()       1                      fan_in    uniform
lecun_normal()        1                      fan_in    normal
fan_in_uniform()      1/3                    fan_in    uniform
====================  =====================  ========  ============
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ._checks import (
    Initializer,
    check_axis,
    check_dtype,
    check_key,
    check_number,
    check_shape,
    nan_unless,
)
from ._fans import batch_axes, compute_fans

MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("uniform", "normal", "truncated_normal")
# standard deviation of a standard normal truncated to [−2, 2]
TRUNCATED_STDDEV = 0.87962566103423978


def _check_choice(owner: str, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, allowed))}; "
                         f"got {value!r}.")


def _check_distinct_axes(owner: str, in_axis: int, out_axis: int, batch: tuple) -> None:
    """ValueError now if two axes are the same for every rank (same sign and value); the
    others (e.g. -1 and 1, the same axis only at rank 2) are checked with the shape."""
    named = [("in_axis", in_axis), ("out_axis", out_axis)] + [("batch_axis", b) for b in batch]
    for i, (first, a) in enumerate(named):
        for second, b in named[i + 1:]:
            if a == b:
                raise ValueError(f"{owner}: {first} and {second} must name different axes; "
                                 f"both are {a}.")


def variance_scaling(scale: float, mode: str, distribution: str, in_axis: int = -2,
                     out_axis: int = -1, batch_axis: Sequence[int] | int = (),
                     *, name: str = "variance_scaling") -> Initializer:
    """Weights with variance σ² = scale / n, n = fan_in, fan_out or (fan_in + fan_out) / 2.

    The distributions, each with variance exactly σ²:

    * ``"uniform"``: U[−√3·σ, +√3·σ];
    * ``"normal"``: N(0, σ²);
    * ``"truncated_normal"``: N(0, (σ / 0.87962566)²) cut (redrawn, not clipped)
      at ±2 of its own standard deviations, i.e. |w| ≤ 2σ / 0.87962566; the
      division undoes the variance lost to the cut, 0.87962566 being the
      standard deviation of a standard normal truncated to [−2, 2].

    Fans follow :func:`init.compute_fans` (dense (in, out): the matrix sizes;
    HWIO conv kernels: receptive field × channels). n is taken as at least 1,
    so shapes with an empty axis do not divide by zero. Samples are drawn in
    float32 (float64 for float64) and cast, so bfloat16/float16 weights are the
    rounded float32 draws.

    Args:
      scale: the variance multiplier, a finite number ≥ 0 (e.g. 2 for ReLU, the
        gain squared). Traced, it is not checked (a negative one gives NaN).
      mode: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``.
      distribution: ``"uniform"``, ``"normal"`` or ``"truncated_normal"``.
      in_axis: the input-feature axis of the weight shape.
      out_axis: the output-feature axis.
      batch_axis: axes of independent weight sets, counted in neither fan.
      name: the function name used in error messages (for the named initializers).

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Raises:
      ValueError: a negative or non-finite scale, an unknown mode or
        distribution, in_axis/out_axis/batch_axis naming the same axis (here),
        or a shape whose fans cannot be computed (when the initializer is called).

    Example:
      >>> he = init.variance_scaling(2.0, "fan_in", "normal")
      >>> w = he(jax.random.key(0), (784, 256))
      >>> w.shape, w.dtype
      ((784, 256), dtype('float32'))
    """
    check_number(name, "scale", scale, non_negative=True)
    _check_choice(name, "mode", mode, MODES)
    _check_choice(name, "distribution", distribution, DISTRIBUTIONS)
    check_axis(name, "in_axis", in_axis)
    check_axis(name, "out_axis", out_axis)
    batch = batch_axes(name, batch_axis)
    _check_distinct_axes(name, in_axis, out_axis, batch)

    def initializer(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        check_key(name, key)
        shape = check_shape(name, shape)
        dtype = check_dtype(name, dtype)
        try:
            fan_in, fan_out = compute_fans(shape, in_axis, out_axis, batch)
        except ValueError as error:
            raise ValueError(str(error).replace("compute_fans:", f"{name}:", 1)) from None
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        sample_dtype = jnp.promote_types(dtype, jnp.float32)
        stddev = jnp.sqrt(jnp.asarray(scale, sample_dtype) / max(1.0, n))
        if distribution == "uniform":
            bound = jnp.sqrt(jnp.asarray(3.0, sample_dtype)) * stddev
            x = jax.random.uniform(key, shape, sample_dtype, -bound, bound)
        elif distribution == "normal":
            x = jax.random.normal(key, shape, sample_dtype) * stddev
        else:
            x = jax.random.truncated_normal(key, -2.0, 2.0, shape, sample_dtype) * (
                stddev / TRUNCATED_STDDEV)
        return x.astype(dtype)

    return initializer


def xavier_uniform(gain: float = 1.0) -> Initializer:
    """Xavier/Glorot uniform: U[−b, +b] with b = gain·√(6 / (n_in + n_out)).

    Variance gain²·2 / (n_in + n_out), the compromise between keeping the
    activations' variance (n_in·Var(w) = 1) and the gradients' variance
    (n_out·Var(w) = 1) constant across layers of a tanh-like network.
    ``variance_scaling(gain², "fan_avg", "uniform")``.

    Args:
      gain: multiplies the bound, as in ``torch.nn.init.xavier_uniform_(gain=)``
        (e.g. 5/3 for tanh per ``torch.nn.init.calculate_gain``); ≥ 0.

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
      >>> w = init.xavier_uniform()(jax.random.key(0), (256, 128))
      >>> bool(abs(w).max() <= (6 / (256 + 128)) ** 0.5)
      True

    Reference: X. Glorot and Y. Bengio, "Understanding the difficulty of training
    deep feedforward neural networks", AISTATS 2010 (eq. 16, "normalized
    initialization").
    """
    return variance_scaling(_gain_scale("xavier_uniform", gain), "fan_avg", "uniform",
                            name="xavier_uniform")


def xavier_normal(gain: float = 1.0) -> Initializer:
    """Xavier/Glorot normal: N(0, gain²·2 / (n_in + n_out)).

    The normal distribution with the variance of :func:`xavier_uniform`.
    ``variance_scaling(gain², "fan_avg", "normal")``.

    Args:
      gain: multiplies the standard deviation, as in
        ``torch.nn.init.xavier_normal_(gain=)``; ≥ 0.

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
      >>> w = init.xavier_normal()(jax.random.key(0), (256, 128))

    Reference: X. Glorot and Y. Bengio, AISTATS 2010 (see :func:`xavier_uniform`).
    """
    return variance_scaling(_gain_scale("xavier_normal", gain), "fan_avg", "normal",
                            name="xavier_normal")


def _gain_scale(owner: str, gain: float) -> Any:
    """gain², for a finite gain ≥ 0 whose square is finite (a traced negative gain: NaN)."""
    check_number(owner, "gain", gain, non_negative=True)
    if isinstance(gain, jax.core.Tracer):
        return nan_unless(gain, lambda g: g >= 0) ** 2
    if not float(gain) <= 1e150:
        raise ValueError(f"{owner}: gain must be at most 1e150 (its square is the variance "
                         f"scale); got {gain!r}.")
    return float(gain) ** 2


def _he_scale(owner: str, negative_slope: float) -> Any:
    """2 / (1 + a²), for a finite real a (a huge |a| gives 0, not an OverflowError)."""
    check_number(owner, "negative_slope", negative_slope)
    if isinstance(negative_slope, jax.core.Tracer):
        return 2.0 / (1.0 + negative_slope**2)
    return (math.sqrt(2.0) / math.hypot(1.0, float(negative_slope))) ** 2


def he_uniform(negative_slope: float = 0.0, mode: str = "fan_in") -> Initializer:
    """He/Kaiming uniform: U[−b, +b] with b = √(6 / ((1 + a²)·n)), n = fan_in by default.

    Variance 2 / ((1 + a²)·n): a rectifier halves the second moment of its
    input, and the factor 2 (= gain², gain = √2) restores it. a is the slope of
    the negative part (0 for ReLU, a for leaky ReLU/PReLU); mode ``"fan_in"``
    preserves the forward activations' variance, ``"fan_out"`` the backward
    gradients'. Equal to ``torch.nn.init.kaiming_uniform_(w, a=a, mode=mode)``.
    ``variance_scaling(2 / (1 + a²), mode, "uniform")``.

    Args:
      negative_slope: a, the rectifier's negative slope.
      mode: ``"fan_in"`` (default) or ``"fan_out"`` (``"fan_avg"`` also works).

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
      >>> w = init.he_uniform()(jax.random.key(0), (784, 256))
      >>> bool(abs(w).max() <= (6 / 784) ** 0.5)
      True

    Reference: K. He, X. Zhang, S. Ren and J. Sun, "Delving Deep into Rectifiers:
    Surpassing Human-Level Performance on ImageNet Classification", ICCV 2015
    (eqs. 10 and 14, and the PReLU form 1/2·(1 + a²)·n·Var(w) = 1).
    """
    return variance_scaling(_he_scale("he_uniform", negative_slope), mode, "uniform",
                            name="he_uniform")


def he_normal(negative_slope: float = 0.0, mode: str = "fan_in") -> Initializer:
    """He/Kaiming normal: N(0, 2 / ((1 + a²)·n)), n = fan_in by default.

    For ReLU (a = 0) this is ``randn(n_in, n_out) · √(2 / n_in)``. Equal to
    ``torch.nn.init.kaiming_normal_(w, a=a, mode=mode)``; see :func:`he_uniform`
    for a and mode. ``variance_scaling(2 / (1 + a²), mode, "normal")``.

    Args:
      negative_slope: a, the rectifier's negative slope.
      mode: ``"fan_in"`` (default) or ``"fan_out"``.

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
      >>> w = init.he_normal()(jax.random.key(0), (3, 3, 64, 128))   # fan_in = 3·3·64

    Reference: K. He et al., ICCV 2015 (see :func:`he_uniform`).
    """
    return variance_scaling(_he_scale("he_normal", negative_slope), mode, "normal",
                            name="he_normal")


def lecun_uniform() -> Initializer:
    """LeCun uniform: U[−√(3 / n_in), +√(3 / n_in)], variance 1 / n_in.

    Unit-variance inputs then give unit-variance pre-activations (the σ = n_in^(−1/2)
    recommendation, for the scaled tanh 1.7159·tanh(2x/3)).
    ``variance_scaling(1, "fan_in", "uniform")``.

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
      >>> w = init.lecun_uniform()(jax.random.key(0), (64, 32))
      >>> bool(abs(w).max() <= (3 / 64) ** 0.5)
      True

    Reference: Y. LeCun, L. Bottou, G. Orr and K.-R. Müller, "Efficient
    BackProp", in Neural Networks: Tricks of the Trade, 1998 (section 4.6).
    """
    return variance_scaling(1.0, "fan_in", "uniform", name="lecun_uniform")


def lecun_normal() -> Initializer:
    """LeCun normal: N(0, 1 / n_in), i.e. ``randn(n_in, n_out) / √n_in``.

    ``variance_scaling(1, "fan_in", "normal")``.

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
      >>> w = init.lecun_normal()(jax.random.key(0), (64, 32))

    Reference: Y. LeCun et al., "Efficient BackProp", 1998 (see :func:`lecun_uniform`).
    """
    return variance_scaling(1.0, "fan_in", "normal", name="lecun_normal")


def fan_in_uniform() -> Initializer:
    """U(−1/√d, +1/√d) with d = fan_in; variance 1 / (3d).

    The "commonly used heuristic" that Glorot & Bengio compare against, and
    torch's default for ``nn.Linear``/``nn.Conv*`` weights and biases.
    ``variance_scaling(1/3, "fan_in", "uniform")``.

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Example:
      >>> w = init.fan_in_uniform()(jax.random.key(0), (64, 32))
      >>> bool(abs(w).max() <= 1 / 8)
      True

    Reference: X. Glorot and Y. Bengio, AISTATS 2010 (eq. 1).
    """
    return variance_scaling(1.0 / 3.0, "fan_in", "uniform", name="fan_in_uniform")


glorot_uniform = xavier_uniform
glorot_normal = xavier_normal
kaiming_uniform = he_uniform
kaiming_normal = he_normal
