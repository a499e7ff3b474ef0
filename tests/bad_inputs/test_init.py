"""init, bad input: hyperparameters that would give non-finite or wrong weights are refused by
the factory (or, for dtype-dependent limits, by the initializer), naming the argument."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import init

KEY = jax.random.key(0)
INF, NAN = float("inf"), float("nan")

# (id, call, exception, a regex the message must match: the argument and the expectation)
BAD = [
    # non-finite hyperparameters: the weights would be inf or NaN
    ("normal stddev inf", lambda: init.normal(stddev=INF), ValueError,
     r"normal: stddev must be a finite number; got inf"),
    ("normal stddev nan", lambda: init.normal(stddev=NAN), ValueError,
     r"normal: stddev must be a finite number; got nan"),
    ("normal mean inf", lambda: init.normal(mean=-INF), ValueError,
     r"normal: mean must be a finite number; got -inf"),
    ("normal stddev numpy inf", lambda: init.normal(stddev=np.float32("inf")), ValueError,
     r"stddev must be a finite number"),
    ("normal stddev array inf", lambda: init.normal(stddev=jnp.asarray(INF)), ValueError,
     r"stddev must be a finite number"),
    ("constant nan", lambda: init.constant(NAN), ValueError,
     r"constant: value must be a finite number; got nan"),
    ("constant inf", lambda: init.constant(INF), ValueError,
     r"constant: value must be a finite number; got inf"),
    ("uniform low -inf", lambda: init.uniform(-INF, 1.0), ValueError,
     r"uniform: low must be a finite number; got -inf"),
    ("uniform high nan", lambda: init.uniform(0.0, NAN), ValueError,
     r"uniform: high must be a finite number; got nan"),
    ("truncated_normal stddev inf", lambda: init.truncated_normal(INF), ValueError,
     r"truncated_normal: stddev must be a finite number"),
    ("truncated_normal lower nan", lambda: init.truncated_normal(0.1, NAN, 2.0), ValueError,
     r"truncated_normal: lower must be a number \(not NaN\); got nan"),
    ("variance_scaling scale inf", lambda: init.variance_scaling(INF, "fan_in", "normal"),
     ValueError, r"variance_scaling: scale must be a finite number; got inf"),
    ("xavier gain inf", lambda: init.xavier_uniform(gain=INF), ValueError,
     r"xavier_uniform: gain must be a finite number; got inf"),
    ("xavier gain squared overflows", lambda: init.xavier_normal(gain=1e200), ValueError,
     r"xavier_normal: gain must be at most 1e150"),
    ("he slope inf", lambda: init.he_uniform(negative_slope=INF), ValueError,
     r"he_uniform: negative_slope must be a finite number; got inf"),
    ("he slope nan", lambda: init.he_normal(negative_slope=NAN), ValueError,
     r"he_normal: negative_slope must be a finite number; got nan"),
    ("orthogonal scale inf", lambda: init.orthogonal(scale=INF), ValueError,
     r"orthogonal: scale must be a finite number; got inf"),
    ("scaled factor nan", lambda: init.scaled(init.ones(), NAN), ValueError,
     r"scaled: factor must be a finite number; got nan"),
    # ranges
    ("uniform low > high (numpy)", lambda: init.uniform(np.float32(1.0), np.float32(0.0)),
     ValueError, r"uniform: low must be < high"),
    ("truncated_normal cut in the far tail", lambda: init.truncated_normal(0.1, 5.0, 6.0),
     ValueError, r"truncated_normal: the cut \[lower, upper\] = \[5.0, 6.0\] lies entirely "
                 r"beyond ±4 standard deviations.*expected lower < 4 and upper > -4"),
    ("truncated_normal cut in the far left tail",
     lambda: init.truncated_normal(0.1, -INF, -4.5), ValueError,
     r"truncated_normal: the cut .* expected lower < 4 and upper > -4"),
    ("truncated_normal lower == upper == inf", lambda: init.truncated_normal(0.1, INF, INF),
     ValueError, r"truncated_normal: lower must be < upper"),
    # strings
    ("mode wrong case", lambda: init.variance_scaling(1.0, "FAN_IN", "normal"), ValueError,
     r"mode must be one of 'fan_in', 'fan_out', 'fan_avg'; got 'FAN_IN'"),
    ("mode not a string", lambda: init.he_uniform(mode=None), ValueError,
     r"he_uniform: mode must be one of .*; got None"),
    ("distribution misspelled", lambda: init.variance_scaling(1.0, "fan_in", "gaussian"),
     ValueError, r"distribution must be one of 'uniform', 'normal', 'truncated_normal'"),
    # axes that name the same axis at every rank: refused by the factory
    ("in_axis == out_axis", lambda: init.variance_scaling(1.0, "fan_in", "normal", in_axis=-1,
                                                          out_axis=-1), ValueError,
     r"variance_scaling: in_axis and out_axis must name different axes; both are -1"),
    ("batch_axis == out_axis", lambda: init.variance_scaling(1.0, "fan_in", "normal",
                                                             batch_axis=(0, -1)), ValueError,
     r"out_axis and batch_axis must name different axes; both are -1"),
    ("batch_axis twice", lambda: init.variance_scaling(1.0, "fan_in", "normal",
                                                       batch_axis=(0, 0)), ValueError,
     r"batch_axis and batch_axis must name different axes; both are 0"),
    ("in_axis out of range at call",
     lambda: init.variance_scaling(2.0, "fan_in", "normal", in_axis=-3)(KEY, (3, 3)), ValueError,
     r"in_axis=-3 is out of range for rank 2"),
    ("orthogonal rank 0", lambda: init.orthogonal()(KEY, ()), ValueError,
     r"orthogonal: shape must have rank >= 2"),
    ("orthogonal column_axis out of range", lambda: init.orthogonal(column_axis=-3)(KEY, (2, 2)),
     ValueError, r"orthogonal: column_axis=-3 is out of range for shape \(2, 2\)"),
    # values that overflow the requested dtype: the weights would be inf
    ("constant overflows float16", lambda: init.constant(1e5)(KEY, (2,), jnp.float16),
     ValueError, r"constant: value=100000.0 overflows float16 \(largest finite value 65504\)"),
    ("constant overflows bfloat16", lambda: init.constant(1e39)(KEY, (2,), jnp.bfloat16),
     ValueError, r"constant: value=1e\+39 overflows bfloat16"),
    ("uniform bound overflows float16", lambda: init.uniform(-7e4, 0.0)(KEY, (2,), jnp.float16),
     ValueError, r"uniform: low=-70000.0 overflows float16"),
    ("uniform width overflows float32", lambda: init.uniform(-3e38, 3e38)(KEY, (2,)),
     ValueError, r"uniform: high - low=6e\+38 overflows float32"),
]


@pytest.mark.parametrize("make, error, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(make, error, message):
    with pytest.raises(error, match=message):
        make()


# the good neighbours: accepted, with the right values
def test_a_huge_negative_slope_gives_the_limit_not_an_overflow():
    # 2 / (1 + a²) → 0: weights of variance 0, where Python's a**2 raised OverflowError
    w = init.he_normal(negative_slope=1e200)(KEY, (3, 3))
    assert np.all(np.asarray(w) == 0.0)
    w = init.he_normal(negative_slope=1.0)(KEY, (400, 300))  # variance 1 / fan_in
    assert abs(np.var(np.asarray(w, np.float64)) * 400 - 1) < 6 * math.sqrt(2 / w.size)


def test_half_normal_and_one_sided_cuts_are_sampled_in_the_tail_correctly():
    """A cut at 3σ with no upper bound: jax.random.truncated_normal alone returns 3.4e38 for
    some draws in float32; the mean is φ(a) / (1 − Φ(a)) (a closed form), the std < 0.3."""
    a = 3.0
    mean = math.exp(-a * a / 2) / math.sqrt(2 * math.pi) / (math.erfc(a / math.sqrt(2)) / 2)
    for dtype in (jnp.float32, jnp.float64, jnp.bfloat16):
        w = np.asarray(init.truncated_normal(1.0, a, INF)(KEY, (100_000,), dtype), np.float64)
        assert np.isfinite(w).all() and w.min() >= a - 2e-2 and w.max() <= 8.0
        assert abs(w.mean() - mean) < 5 * 0.3 / math.sqrt(w.size) + 2e-2 * (
            dtype == jnp.bfloat16)
    w = np.asarray(init.truncated_normal(0.5, 0.0, INF)(KEY, (100_000,)), np.float64)
    assert w.min() >= 0 and abs(w.mean() - 0.5 * math.sqrt(2 / math.pi)) < 3e-3


def test_infinite_cuts_give_a_plain_normal():
    w = np.asarray(init.truncated_normal(2.0, -INF, INF)(KEY, (100_000,)), np.float64)
    assert np.isfinite(w).all() and abs(w.std() - 2.0) < 0.02
