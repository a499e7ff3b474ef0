"""Every random initializer against its closed form: bounds, mean, variance and the whole CDF.

Expected distributions are written from the formulas in the papers (as scipy
distributions); tolerances are 6 standard errors of the estimators for the
sample size, so a correct implementation fails with probability ~1e-9 and a
wrong fan, scale or distribution (a factor 2 in the variance, a missing
truncation correction, uniform instead of normal) fails for certain.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st

import init

KEY = jax.random.key(0)
SHAPE = (1000, 500)  # dense (in, out): fan_in 1000, fan_out 500, 500k draws
FAN_IN, FAN_OUT = 1000, 500
FAN_AVG = (FAN_IN + FAN_OUT) / 2
TRUNC = 0.87962566103423978  # std of N(0, 1) cut at ±2


def uniform_pm(bound):
    return st.uniform(-bound, 2 * bound)


def normal(std, mean=0.0):
    return st.norm(mean, std)


def trunc(std_before, lower=-2.0, upper=2.0):
    return st.truncnorm(lower, upper, scale=std_before)


def vs_dist(scale, mode, distribution):
    n = {"fan_in": FAN_IN, "fan_out": FAN_OUT, "fan_avg": FAN_AVG}[mode]
    std = math.sqrt(scale / n)
    return {"uniform": uniform_pm(math.sqrt(3) * std), "normal": normal(std),
            "truncated_normal": trunc(std / TRUNC)}[distribution]


CASES = {
    # Glorot & Bengio 2010 eq. 16: U[-sqrt(6/(n_in+n_out)), +sqrt(6/(n_in+n_out))]
    "xavier_uniform": (init.xavier_uniform(), uniform_pm(math.sqrt(6 / (FAN_IN + FAN_OUT)))),
    "xavier_uniform_gain": (init.xavier_uniform(gain=5 / 3),
                            uniform_pm(5 / 3 * math.sqrt(6 / (FAN_IN + FAN_OUT)))),
    "xavier_normal": (init.xavier_normal(), normal(math.sqrt(2 / (FAN_IN + FAN_OUT)))),
    "xavier_normal_gain": (init.xavier_normal(gain=2.0), normal(2 * math.sqrt(2 / (FAN_IN + FAN_OUT)))),
    # He et al. 2015: Var = 2 / ((1 + a^2) n)
    "he_uniform": (init.he_uniform(), uniform_pm(math.sqrt(6 / FAN_IN))),
    "he_uniform_leaky": (init.he_uniform(negative_slope=0.2),
                         uniform_pm(math.sqrt(3 * 2 / (1.04 * FAN_IN)))),
    "he_uniform_fan_out": (init.he_uniform(mode="fan_out"), uniform_pm(math.sqrt(6 / FAN_OUT))),
    "he_normal": (init.he_normal(), normal(math.sqrt(2 / FAN_IN))),
    "he_normal_leaky": (init.he_normal(negative_slope=0.5), normal(math.sqrt(2 / (1.25 * FAN_IN)))),
    "he_normal_fan_out": (init.he_normal(mode="fan_out"), normal(math.sqrt(2 / FAN_OUT))),
    # LeCun et al. 1998: Var = 1 / n_in
    "lecun_uniform": (init.lecun_uniform(), uniform_pm(math.sqrt(3 / FAN_IN))),
    "lecun_normal": (init.lecun_normal(), normal(math.sqrt(1 / FAN_IN))),
    "fan_in_uniform": (init.fan_in_uniform(), uniform_pm(1 / math.sqrt(FAN_IN))),
    "normal": (init.normal(0.01), normal(0.01)),
    "normal_mean": (init.normal(0.5, mean=2.0), normal(0.5, mean=2.0)),
    "uniform": (init.uniform(-0.3, 0.3), uniform_pm(0.3)),
    "uniform_asymmetric": (init.uniform(0.1, 0.7), st.uniform(0.1, 0.6)),
    "truncated_normal": (init.truncated_normal(0.5), trunc(0.5)),
    "truncated_normal_asymmetric": (init.truncated_normal(0.5, -1.0, 3.0), trunc(0.5, -1.0, 3.0)),
    "scaled": (init.scaled(init.he_uniform(), -0.5), uniform_pm(0.5 * math.sqrt(6 / FAN_IN))),
}
for _mode in ("fan_in", "fan_out", "fan_avg"):
    for _dist in ("uniform", "normal", "truncated_normal"):
        CASES[f"variance_scaling_{_mode}_{_dist}"] = (
            init.variance_scaling(1.7, _mode, _dist), vs_dist(1.7, _mode, _dist))


def assert_matches(w, dist, *, check_cdf=True):
    """Sample mean and variance within 6 standard errors; support and bounds; KS test."""
    w = np.asarray(w, np.float64).ravel()
    n = w.size
    mean, var, excess_kurtosis = (float(v) for v in dist.stats(moments="mvk"))
    mean_se = math.sqrt(var / n)
    var_se = var * math.sqrt((excess_kurtosis + 2) / n)  # Var(s^2) ~ (mu4 - sigma^4) / n
    assert abs(w.mean() - mean) < 6 * mean_se, (w.mean(), mean)
    assert abs(w.var() - var) < 6 * var_se, (w.var(), var)
    low, high = dist.support()
    if np.isfinite(low):
        width = high - low
        assert w.min() >= low * (1 + 1e-12 * np.sign(low)) and w.max() <= high * (1 + 1e-12)
        assert w.min() <= low + 0.01 * width and w.max() >= high - 0.01 * width  # bounds reached
        if low == -high:
            assert np.abs(w).max() >= 0.99 * high
    if check_cdf:
        assert st.kstest(w, dist.cdf).pvalue > 1e-6


@pytest.mark.parametrize("name", list(CASES))
def test_matches_the_closed_form(name):
    initializer, dist = CASES[name]
    assert_matches(initializer(KEY, SHAPE, jnp.float64), dist)


def test_the_truncated_variance_is_the_requested_one():
    # the constant really is the standard deviation of N(0, 1) cut at ±2
    assert abs(st.truncnorm(-2, 2).std() - TRUNC) < 1e-15
    sigma2 = 1.7 / FAN_AVG
    assert abs(vs_dist(1.7, "fan_avg", "truncated_normal").var() / sigma2 - 1) < 1e-12


def test_aliases_are_the_same_factories():
    assert init.glorot_uniform is init.xavier_uniform
    assert init.glorot_normal is init.xavier_normal
    assert init.kaiming_uniform is init.he_uniform
    assert init.kaiming_normal is init.he_normal


def test_constants():
    np.testing.assert_array_equal(init.zeros()(KEY, (3, 2)), np.zeros((3, 2)))
    np.testing.assert_array_equal(init.ones()(KEY, (4,), jnp.bfloat16), np.ones(4))
    np.testing.assert_array_equal(init.constant(0.3)(KEY, (2, 2), jnp.float64),
                                  np.full((2, 2), 0.3))
    np.testing.assert_array_equal(init.constant(-2.5)(KEY, ()), np.float32(-2.5))


# fans written out by hand from the rule in init/_fans.py
FANS = [
    ((), {}, (1, 1)),
    ((7,), {}, (7, 7)),
    ((5, 7), {}, (5, 7)),
    ((9, 16, 32), {}, (9 * 16, 9 * 32)),                       # 1-D conv, WIO
    ((3, 3, 16, 32), {}, (144, 288)),                          # 2-D conv, HWIO
    ((2, 3, 4, 5, 6), {}, (2 * 3 * 4 * 5, 2 * 3 * 4 * 6)),     # 3-D conv, DHWIO
    ((2, 2, 3, 3, 4, 5), {}, (36 * 4, 36 * 5)),                # rank 6
    ((64, 32, 3, 3), {"in_axis": 1, "out_axis": 0}, (32 * 9, 64 * 9)),  # torch OIHW
    ((8, 3, 3, 4), {"in_axis": 0, "out_axis": -1, "batch_axis": 1}, (24, 12)),
    ((4, 100, 50), {"batch_axis": 0}, (100, 50)),              # a stack of 4 dense layers
    ((4, 2, 100, 50), {"batch_axis": (0, 1)}, (100, 50)),
    ((0, 5), {}, (0, 5)),
]


@pytest.mark.parametrize("shape, axes, fans", FANS, ids=[str(f[0]) + str(f[1]) for f in FANS])
def test_compute_fans(shape, axes, fans):
    assert init.compute_fans(shape, **axes) == tuple(float(f) for f in fans)


CONV = {
    "he_normal_hwio": (init.he_normal(), (5, 5, 64, 128), normal(math.sqrt(2 / (25 * 64)))),
    "xavier_uniform_hwio": (init.xavier_uniform(), (3, 3, 32, 64),
                            uniform_pm(math.sqrt(6 / (9 * 32 + 9 * 64)))),
    "he_uniform_fan_out_hwio": (init.he_uniform(mode="fan_out"), (3, 3, 64, 96),
                                uniform_pm(math.sqrt(6 / (9 * 96)))),
    "lecun_normal_1d_conv": (init.lecun_normal(), (7, 160, 320), normal(math.sqrt(1 / (7 * 160)))),
    "fan_in_uniform_3d_conv": (init.fan_in_uniform(), (3, 3, 3, 32, 64),
                               uniform_pm(1 / math.sqrt(27 * 32))),
    "torch_layout_oihw": (init.variance_scaling(2.0, "fan_in", "normal", in_axis=1, out_axis=0),
                          (128, 64, 5, 5), normal(math.sqrt(2 / (64 * 25)))),
    "batch_of_dense": (init.variance_scaling(1.0, "fan_out", "uniform", batch_axis=0),
                       (8, 300, 200), uniform_pm(math.sqrt(3 / 200))),
    "rank_1": (init.lecun_normal(), (200_000,), normal(math.sqrt(1 / 200_000))),
}


@pytest.mark.parametrize("name", list(CONV))
def test_kernel_fans_include_the_receptive_field(name):
    initializer, shape, dist = CONV[name]
    w = initializer(KEY, shape, jnp.float64)
    assert w.shape == shape
    assert_matches(w, dist, check_cdf=False)


def test_rank_0_has_fans_of_one():
    keys = jax.random.split(KEY, 100_000)
    w = jax.vmap(lambda k: init.he_normal()(k, (), jnp.float64))(keys)  # Var = 2 / 1
    assert w.shape == (100_000,)
    assert_matches(w, normal(math.sqrt(2.0)), check_cdf=False)
