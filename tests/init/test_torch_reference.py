"""Cross-checks with torch.nn.init: the same variance and bounds (not the same draw)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import init

torch = pytest.importorskip("torch")
UNIFORM, NORMAL = -1.2, 0.0  # excess kurtosis


def variance_ratio_tolerance(n, excess_kurtosis):
    # 6 standard errors of the ratio of two independent sample variances
    return 6 * math.sqrt(2 * (excess_kurtosis + 2) / n)



def torch_sample(fill, shape):
    torch.manual_seed(0)
    t = torch.empty(*shape, dtype=torch.float64)
    fill(t)
    return t.numpy()


# torch stores Linear weights as (out, in) and conv kernels as (out, in, kh, kw); ours are
# (in, out) and HWIO, so the same layer has transposed shapes.
TORCH_PAIRS = {
    "xavier_uniform_gain": (init.xavier_uniform(gain=5 / 3), (1000, 500),
                            lambda t: torch.nn.init.xavier_uniform_(t, gain=5 / 3), (500, 1000),
                            UNIFORM),
    "xavier_normal": (init.xavier_normal(), (1000, 500), torch.nn.init.xavier_normal_, (500, 1000),
                      NORMAL),
    "kaiming_uniform_leaky": (init.he_uniform(negative_slope=0.2), (1000, 500),
                              lambda t: torch.nn.init.kaiming_uniform_(t, a=0.2), (500, 1000),
                              UNIFORM),
    "kaiming_normal_fan_out": (init.he_normal(mode="fan_out"), (1000, 500),
                               lambda t: torch.nn.init.kaiming_normal_(t, mode="fan_out"),
                               (500, 1000), NORMAL),
    "kaiming_uniform_conv_fan_in": (init.he_uniform(), (3, 3, 64, 128),
                                    torch.nn.init.kaiming_uniform_, (128, 64, 3, 3), UNIFORM),
    "kaiming_uniform_conv_fan_out": (init.he_uniform(mode="fan_out"), (3, 3, 64, 128),
                                     lambda t: torch.nn.init.kaiming_uniform_(t, mode="fan_out"),
                                     (128, 64, 3, 3), UNIFORM),
    "xavier_uniform_conv": (init.xavier_uniform(), (5, 5, 32, 64), torch.nn.init.xavier_uniform_,
                            (64, 32, 5, 5), UNIFORM),
}


@pytest.mark.parametrize("name", list(TORCH_PAIRS))
def test_same_distribution_as_torch_nn_init(name):
    ours, shape, fill, torch_shape, kurtosis = TORCH_PAIRS[name]
    a = np.asarray(ours(jax.random.key(2), shape, jnp.float64))
    b = torch_sample(fill, torch_shape)
    assert abs(a.var() / b.var() - 1) < variance_ratio_tolerance(a.size, kurtosis)
    if kurtosis != NORMAL:
        assert abs(np.abs(a).max() / np.abs(b).max() - 1) < 0.01


@pytest.mark.parametrize("a", [0.0, 0.2, math.sqrt(5)])
def test_he_scale_is_torch_gain_squared(a):
    # our He variance is 2 / ((1 + a^2) n) = calculate_gain("leaky_relu", a)^2 / n
    gain = torch.nn.init.calculate_gain("leaky_relu", a)
    w = np.asarray(init.he_uniform(negative_slope=a)(jax.random.key(3), (1000, 500), jnp.float64))
    assert abs(np.abs(w).max() / (gain * math.sqrt(3 / 1000)) - 1) < 0.01


def test_fan_in_uniform_is_torch_linear_and_conv_default():
    linear = torch.nn.Linear(1000, 500, dtype=torch.float64)
    conv = torch.nn.Conv2d(32, 64, 3, dtype=torch.float64)
    for layer, shape in [(linear, (1000, 500)), (conv, (3, 3, 32, 64))]:
        theirs = layer.weight.detach().numpy()
        ours = np.asarray(init.fan_in_uniform()(jax.random.key(4), shape, jnp.float64))
        assert abs(np.abs(ours).max() / np.abs(theirs).max() - 1) < 0.01
