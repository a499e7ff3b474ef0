"""Cross-checks with jax.nn.initializers and Flax (torch.nn.init: test_torch_reference.py).

Same distribution, not the same draw: the variances of independent samples
agree within 6 standard errors of their ratio, and uniform bounds within 1%.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import init

jnn = jax.nn.initializers
SHAPE = (1000, 500)


def variance_ratio_tolerance(n, excess_kurtosis):
    # the relative standard error of a sample variance is sqrt((k_excess + 2) / n);
    # a ratio of two independent ones has sqrt(2) times that
    return 6 * math.sqrt(2 * (excess_kurtosis + 2) / n)


UNIFORM, NORMAL, TRUNCATED = -1.2, 0.0, -0.6344632828703505  # excess kurtosis (scipy)

JAX_PAIRS = {
    "xavier_uniform": (init.xavier_uniform(), jnn.glorot_uniform(), SHAPE, UNIFORM),
    "xavier_normal": (init.xavier_normal(), jnn.glorot_normal(), SHAPE, NORMAL),
    "he_uniform": (init.he_uniform(), jnn.he_uniform(), SHAPE, UNIFORM),
    "he_normal": (init.he_normal(), jnn.he_normal(), SHAPE, NORMAL),
    "lecun_uniform": (init.lecun_uniform(), jnn.lecun_uniform(), SHAPE, UNIFORM),
    "lecun_normal": (init.lecun_normal(), jnn.lecun_normal(), SHAPE, NORMAL),
    "truncated_variance_scaling": (init.variance_scaling(1.0, "fan_avg", "truncated_normal"),
                                   jnn.variance_scaling(1.0, "fan_avg", "truncated_normal"),
                                   SHAPE, TRUNCATED),
    "normal": (init.normal(0.05), jnn.normal(0.05), SHAPE, NORMAL),
    "truncated_normal": (init.truncated_normal(0.3), jnn.truncated_normal(0.3), SHAPE, TRUNCATED),
    "he_normal_hwio": (init.he_normal(), jnn.he_normal(), (3, 3, 64, 96), NORMAL),
    "fan_out_rank_5": (init.variance_scaling(0.5, "fan_out", "uniform"),
                       jnn.variance_scaling(0.5, "fan_out", "uniform"), (3, 3, 3, 40, 50), UNIFORM),
    "axes_and_batch": (
        init.variance_scaling(2.0, "fan_avg", "normal", in_axis=1, out_axis=-1, batch_axis=0),
        jnn.variance_scaling(2.0, "fan_avg", "normal", in_axis=1, out_axis=-1, batch_axis=0),
        (6, 200, 3, 100), NORMAL),
}


@pytest.mark.parametrize("name", list(JAX_PAIRS))
def test_same_distribution_as_jax_nn_initializers(name):
    ours, theirs, shape, kurtosis = JAX_PAIRS[name]
    a = np.asarray(ours(jax.random.key(5), shape, jnp.float64))
    b = np.asarray(theirs(jax.random.key(6), shape, jnp.float64))
    assert not np.array_equal(a, b)
    assert abs(a.var() / b.var() - 1) < variance_ratio_tolerance(a.size, kurtosis)
    if kurtosis != NORMAL:  # bounded: the same bound
        assert abs(np.abs(a).max() / np.abs(b).max() - 1) < 0.01


def test_orthogonal_agrees_with_jax_in_float32():
    a = np.asarray(init.orthogonal()(jax.random.key(1), (50, 30)), np.float64)
    b = np.asarray(jnn.orthogonal()(jax.random.key(1), (50, 30)), np.float64)
    np.testing.assert_allclose(a.T @ a, b.T @ b, atol=1e-5)


def test_works_in_flax_and_theirs_work_in_ours():
    import flax.linen as nn

    layer = nn.Dense(50, kernel_init=init.he_normal(), bias_init=init.constant(0.2))
    variables = layer.init(jax.random.key(0), jnp.ones((1, 2000)))
    assert variables["params"]["kernel"].dtype == jnp.float32  # flax's param_dtype
    kernel = np.asarray(variables["params"]["kernel"], np.float64)
    assert kernel.shape == (2000, 50)
    assert abs(kernel.var() / (2 / 2000) - 1) < 6 * math.sqrt(2 / kernel.size)
    np.testing.assert_allclose(variables["params"]["bias"], 0.2, rtol=1e-7)

    params = init.tree_init(jax.random.key(0), {"w": (2000, 50), "b": (50,)},
                            init.by_ndim(jnn.lecun_normal(), jnn.zeros))
    assert abs(float(params["w"].var()) / (1 / 2000) - 1) < 6 * math.sqrt(2 / 100_000)
    np.testing.assert_array_equal(params["b"], np.zeros(50))
    w = init.scaled(jnn.glorot_uniform(), 0.5)(jax.random.key(0), (300, 300))
    assert float(jnp.abs(w).max()) <= 0.5 * math.sqrt(6 / 600) * (1 + 1e-6)
