"""init: weight initializers as ``(key, shape, dtype=jnp.float32) -> array`` functions.

The contract, once: every initializer here is made by a factory that is always
called (``init.xavier_uniform()``, ``init.zeros()``, ``init.constant(0.1)``) and
returns a function with the signature of ``jax.nn.initializers``, so these work
in Flax/Equinox layers and theirs work in fnn layers::

    w = init.he_normal()(jax.random.key(0), (784, 256))              # float32
    w = init.orthogonal()(jax.random.key(1), (256, 256), jnp.bfloat16)

Xavier/Glorot, He/Kaiming, LeCun and fan-in uniform are each one call of
:func:`variance_scaling`. Fans follow :func:`compute_fans` (dense (in, out);
conv kernels HWIO: receptive field × channels). :func:`scaled` and
:func:`tree_init` compose them.
"""

from ._fans import compute_fans
from .basic import constant, normal, ones, truncated_normal, uniform, zeros
from .combinators import Rule, by_ndim, by_path, scaled, tree_init
from .orthogonal import orthogonal
from .variance_scaling import (
    Initializer,
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
    "kaiming_uniform", "lecun_normal", "lecun_uniform", "normal", "ones", "orthogonal", "scaled",
    "tree_init", "truncated_normal", "uniform", "variance_scaling", "xavier_normal",
    "xavier_uniform", "zeros",
]
