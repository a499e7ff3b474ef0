"""init: weight initializers as ``(key, shape, dtype=jnp.float32) -> array`` functions.

The contract, stated once:

* An initializer is a function ``(key, shape, dtype=jnp.float32) -> array``, the
  signature of ``jax.nn.initializers``: fnn initializers work in Flax/Equinox
  layers and theirs work in fnn layers. ``key`` is one PRNG key
  (``jax.random.key(0)``), ``shape`` a tuple of ints, ``dtype`` a floating-point
  dtype (float32, float64, bfloat16, float16); the result has exactly that shape
  and dtype. The same key gives the same array; it jit-compiles with shape and
  dtype static, and ``jax.vmap`` over keys draws a batch.
* Every named initializer is made by a factory that is always called, even
  with no arguments: ``init.xavier_uniform()``, ``init.zeros()``,
  ``init.constant(0.1)``. Factories check their hyperparameters when called;
  initializers check key, shape and dtype when called; both raise ``TypeError``
  or ``ValueError`` naming the argument and what was expected.
* Random draws are made in float32 (float64 for float64) and then cast, so
  bfloat16/float16 weights are the rounded float32 draws. float64 needs
  ``jax_enable_x64``; without it JAX warns and gives float32 (as jax.nn does).
* Unlike ``jax.nn.initializers``, integer, bool and complex dtypes are refused,
  even by ``zeros``/``ones``/``constant``: these are initializers of weights.

What is here::

    variance_scaling(scale, mode, distribution, in_axis=-2, out_axis=-1, batch_axis=())
        xavier_uniform / xavier_normal (gain)       = glorot_uniform / glorot_normal
        he_uniform / he_normal (negative_slope, mode) = kaiming_uniform / kaiming_normal
        lecun_uniform / lecun_normal, fan_in_uniform
    orthogonal(scale, column_axis)
    normal(stddev, mean), uniform(low, high), truncated_normal(stddev, lower, upper)
    zeros(), ones(), constant(value)
    compute_fans(shape, in_axis, out_axis, batch_axis)
    scaled(initializer, factor); tree_init(key, shapes, initializer | Rule, dtype)
        with rules by_ndim(weights, biases), by_path(choose), Rule(choose)

Example::

    import jax, jax.numpy as jnp, init
    w = init.he_normal()(jax.random.key(0), (784, 256))               # float32
    w = init.orthogonal()(jax.random.key(1), (256, 256), jnp.bfloat16)
    params = init.tree_init(jax.random.key(2), {"w": (64, 10), "b": (10,)},
                            init.by_ndim(init.xavier_uniform(), init.zeros()))

``init`` imports only jax and numpy.
"""

from ._checks import Initializer
from ._fans import compute_fans
from .basic import constant, normal, ones, truncated_normal, uniform, zeros
from .combinators import Rule, by_ndim, by_path, leaf_key, scaled, tree_init
from .orthogonal import orthogonal
from .variance_scaling import (
    fan_in_uniform,
    glorot_normal,
    glorot_uniform,
    he_normal,
    he_uniform,
    kaiming_normal,
    kaiming_uniform,
    lecun_normal,
    lecun_uniform,
    variance_scaling,
    xavier_normal,
    xavier_uniform,
)

__all__ = [
    "Initializer", "Rule", "by_ndim", "by_path", "compute_fans", "constant", "fan_in_uniform",
    "glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "kaiming_normal",
    "kaiming_uniform", "leaf_key", "lecun_normal", "lecun_uniform", "normal", "ones",
    "orthogonal", "scaled", "tree_init", "truncated_normal", "uniform", "variance_scaling",
    "xavier_normal", "xavier_uniform", "zeros",
]
