"""Activation functions, named as in ``jax.nn``, with their derivatives.

Each is an array function; the layer of the same name in CamelCase (``fnn.Relu()``)
applies it. Derivatives at kinks follow ``jax.nn``: relu'(0) = 0 and
hard_tanh'(±1) = 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sigmoid(x: jax.Array) -> jax.Array:
    """σ(x) = 1 / (1 + e^{−x});  σ'(x) = σ(x)(1 − σ(x))."""
    return jax.nn.sigmoid(x)


def tanh(x: jax.Array) -> jax.Array:
    """tanh(x) = (e^x − e^{−x}) / (e^x + e^{−x});  tanh'(x) = 1 − tanh²(x)."""
    return jnp.tanh(x)


def hard_tanh(x: jax.Array) -> jax.Array:
    """max(−1, min(1, x));  derivative 1 on [−1, 1], 0 outside."""
    return jax.nn.hard_tanh(x)


def soft_sign(x: jax.Array) -> jax.Array:
    """x / (1 + |x|);  derivative 1 / (1 + |x|)² (the notes' sgn(z)/(1+z)² is a slip)."""
    return jax.nn.soft_sign(x)


def relu(x: jax.Array) -> jax.Array:
    """max(0, x);  derivative 1 for x > 0, 0 for x ≤ 0."""
    return jax.nn.relu(x)


def leaky_relu(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
    """x for x ≥ 0, a·x otherwise;  derivative 1 for x > 0, a for x < 0."""
    return jax.nn.leaky_relu(x, negative_slope)


def elu(x: jax.Array, alpha: float = 1.0) -> jax.Array:
    """x for x > 0, α(e^x − 1) otherwise;  derivative 1 for x > 0, α e^x otherwise."""
    return jax.nn.elu(x, alpha)


def gelu(x: jax.Array, approximate: bool = True) -> jax.Array:
    """x Φ(x) (Hendrycks & Gimpel 2016); ``approximate`` uses the tanh form, as ``jax.nn.gelu``."""
    return jax.nn.gelu(x, approximate=approximate)


def softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """e^{x_i} / Σ_j e^{x_j} over ``axis`` (computed as e^{x_i − max x})."""
    return jax.nn.softmax(x, axis=axis)


def log_softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """x_i − log Σ_j e^{x_j} over ``axis``, stable for large |x|."""
    return jax.nn.log_softmax(x, axis=axis)
