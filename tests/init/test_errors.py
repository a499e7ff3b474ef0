"""Bad input: the right exception, raised at the call, naming the argument and what was expected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import init

KEY = jax.random.key(0)
XAVIER = init.xavier_uniform()

# (id, call, exception, a regex the message must match: argument name ... expectation)
BAD = [
    # factories: hyperparameters
    ("unknown mode", lambda: init.variance_scaling(1.0, "fan_sum", "normal"), ValueError,
     r"variance_scaling: mode must be one of 'fan_in', 'fan_out', 'fan_avg'; got 'fan_sum'"),
    ("unknown distribution", lambda: init.variance_scaling(1.0, "fan_in", "cauchy"), ValueError,
     r"distribution must be one of 'uniform', 'normal', 'truncated_normal'; got 'cauchy'"),
    ("he mode", lambda: init.he_normal(mode="fan_sum"), ValueError,
     r"he_normal: mode must be one of 'fan_in', 'fan_out', 'fan_avg'"),
    ("negative scale", lambda: init.variance_scaling(-1.0, "fan_in", "normal"), ValueError,
     r"scale must be >= 0; got -1.0"),
    ("nan scale", lambda: init.variance_scaling(float("nan"), "fan_in", "normal"), ValueError,
     r"scale must be a finite number; got nan"),
    ("negative gain", lambda: init.xavier_uniform(gain=-1.0), ValueError,
     r"xavier_uniform: gain must be >= 0; got -1.0"),
    ("gain not a number", lambda: init.xavier_normal(gain="relu"), TypeError,
     r"xavier_normal: gain must be a real number; got 'relu'"),
    ("slope not a number", lambda: init.he_uniform(negative_slope=None), TypeError,
     r"he_uniform: negative_slope must be a real number; got None"),
    ("negative stddev", lambda: init.normal(-0.1), ValueError, r"normal: stddev must be >= 0"),
    ("negative truncated stddev", lambda: init.truncated_normal(-0.1), ValueError,
     r"truncated_normal: stddev must be >= 0"),
    ("negative orthogonal scale", lambda: init.orthogonal(scale=-1.0), ValueError,
     r"orthogonal: scale must be >= 0"),
    ("low > high", lambda: init.uniform(1.0, -1.0), ValueError,
     r"uniform: low must be < high; got low=1.0, high=-1.0"),
    ("low == high", lambda: init.uniform(0.5, 0.5), ValueError, r"low must be < high"),
    ("lower >= upper", lambda: init.truncated_normal(0.1, 2.0, -2.0), ValueError,
     r"truncated_normal: lower must be < upper; got lower=2.0, upper=-2.0"),
    ("constant not a number", lambda: init.constant("0.1"), TypeError,
     r"constant: value must be a real number"),
    ("axis not an int", lambda: init.variance_scaling(1.0, "fan_in", "normal", in_axis=1.5),
     TypeError, r"in_axis must be an int axis; got 1.5"),
    ("column_axis not an int", lambda: init.orthogonal(column_axis="rows"), TypeError,
     r"orthogonal: column_axis must be an int axis"),
    ("scaled non-callable", lambda: init.scaled("xavier", 2.0), TypeError,
     r"scaled: initializer must be callable"),
    ("scaled factor", lambda: init.scaled(XAVIER, None), TypeError,
     r"scaled: factor must be a real number"),
    # initializers: key
    ("int seed as key", lambda: XAVIER(0, (3, 3)), TypeError,
     r"xavier_uniform: key must be a JAX PRNG key, e.g. jax.random.key\(0\), not the seed 0"),
    ("seed 42 as key", lambda: init.orthogonal()(42, (3, 3)), TypeError,
     r"orthogonal: key must be a JAX PRNG key, e.g. jax.random.key\(42\)"),
    ("float array as key", lambda: init.normal()(jnp.zeros(2), (3,)), TypeError,
     r"normal: key must be a JAX PRNG key, e.g. jax.random.key\(0\); got an array of dtype float64 and shape \(2,\)"),
    ("numpy seed as key", lambda: init.normal()(np.int64(7), (3,)), TypeError,
     r"jax.random.key\(7\), not the seed 7 itself; got the int 7"),
    ("None as key", lambda: init.zeros()(None, (3,)), TypeError,
     r"constant: a PRNG key is required, e.g. key=jax.random.key\(0\)"),
    ("batch of keys", lambda: XAVIER(jax.random.split(KEY, 3), (3, 3)), ValueError,
     r"key must be a single PRNG key; got a batch of keys of shape \(3,\).*jax.vmap"),
    # initializers: dtype
    ("int dtype", lambda: XAVIER(KEY, (3, 3), jnp.int32), TypeError,
     r"xavier_uniform: dtype must be a floating-point dtype \(float32, float64, bfloat16 or "
     r"float16\); got int32"),
    ("int dtype orthogonal", lambda: init.orthogonal()(KEY, (3, 3), np.int8), TypeError,
     r"orthogonal: dtype must be a floating-point dtype.*got int8"),
    ("bool dtype zeros", lambda: init.zeros()(KEY, (3,), bool), TypeError,
     r"dtype must be a floating-point dtype.*got bool"),
    ("complex dtype", lambda: init.normal()(KEY, (3,), jnp.complex64), TypeError,
     r"dtype must be a floating-point dtype.*got complex64"),
    ("None dtype", lambda: init.he_normal()(KEY, (3, 3), None), TypeError,
     r"he_normal: dtype must be a floating-point dtype.*got None"),
    ("not a dtype", lambda: init.uniform()(KEY, (3,), "float33"), TypeError,
     r"uniform: dtype must be a floating-point dtype.*got 'float33', which is not a dtype"),
    # initializers: shape and fans
    ("negative dim", lambda: XAVIER(KEY, (3, -1)), ValueError,
     r"xavier_uniform: shape must be a tuple of non-negative ints, e.g. \(784, 256\); got \(3, -1\)"),
    ("float dim", lambda: init.normal()(KEY, (3.0, 2)), ValueError,
     r"normal: shape must be a tuple of non-negative ints"),
    ("shape not a sequence", lambda: XAVIER(KEY, None), TypeError,
     r"shape must be a tuple of non-negative ints.*got None"),
    ("in_axis out of range",
     lambda: init.variance_scaling(1.0, "fan_in", "normal", in_axis=5)(KEY, (2, 3)), ValueError,
     r"variance_scaling: cannot compute fans of shape \(2, 3\): in_axis=5 is out of range for "
     r"rank 2 \(expected -2 <= in_axis < 2\)"),
    ("same in and out axis",  # the same axis at every rank: refused by the factory
     lambda: init.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=0), ValueError,
     r"variance_scaling: in_axis and out_axis must name different axes; both are 0"),
    ("in and out axis the same at rank 2",
     lambda: init.variance_scaling(1.0, "fan_in", "normal", in_axis=1, out_axis=-1)(KEY, (3, 3)),
     ValueError, r"cannot compute fans of shape \(3, 3\): in_axis .* must name different axes"),
    ("batch axis is out axis", lambda: init.compute_fans((4, 3, 3), batch_axis=-1), ValueError,
     r"compute_fans: cannot compute fans of shape \(4, 3, 3\).*must name different axes"),
    ("batch axis out of range", lambda: init.compute_fans((4, 3, 3), batch_axis=3), ValueError,
     r"batch_axis=3 is out of range for rank 3"),
    ("orthogonal of a vector", lambda: init.orthogonal()(KEY, (5,)), ValueError,
     r"orthogonal: shape must have rank >= 2 \(a matrix or a kernel\); got \(5,\)"),
    ("orthogonal column_axis", lambda: init.orthogonal(column_axis=2)(KEY, (5, 5)), ValueError,
     r"orthogonal: column_axis=2 is out of range for shape \(5, 5\)"),
    # tree_init
    ("tree_init initializer", lambda: init.tree_init(KEY, {"w": (2, 2)}, "xavier"), TypeError,
     r"tree_init: initializer must be an initializer .* or an init.Rule"),
    ("tree_init seed", lambda: init.tree_init(0, {"w": (2, 2)}, XAVIER), TypeError,
     r"tree_init: key must be a JAX PRNG key, e.g. jax.random.key\(0\)"),
    ("tree_init list shape", lambda: init.tree_init(KEY, {"w": [2, 2]}, XAVIER), TypeError,
     r"tree_init: the leaf at \['w'\]\[0\] must be a shape \(a tuple of ints.*a list of ints is not "
     r"a shape: write a tuple"),
    ("tree_init string leaf", lambda: init.tree_init(KEY, {"w": "64x10"}, XAVIER), TypeError,
     r"the leaf at \['w'\] must be a shape"),
    ("tree_init negative dim", lambda: init.tree_init(KEY, {"w": (2, -2)}, XAVIER), ValueError,
     r"tree_init \(leaf \['w'\]\): shape must be a tuple of non-negative ints"),
    ("rule returns junk", lambda: init.tree_init(KEY, {"w": (2, 2)}, init.Rule(lambda p, s: None)),
     TypeError, r"tree_init: the rule chose None for the leaf at \['w'\]; expected an initializer"),
    ("by_ndim junk", lambda: init.by_ndim(XAVIER, 0.0), TypeError,
     r"by_ndim: biases must be an initializer; got 0.0"),
    ("by_path junk", lambda: init.by_path({"w": XAVIER}), TypeError,
     r"by_path: choose must be a function \(path, shape\) -> initializer"),
    ("initializer error inside tree_init", lambda: init.tree_init(KEY, {"w": (3,)},
                                                                  init.orthogonal()),
     ValueError, r"orthogonal: shape must have rank >= 2"),
]


@pytest.mark.parametrize("make, error, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_errors_are_raised_eagerly_under_jit():
    # shapes and dtypes are static: the error comes at trace time, from our check
    with pytest.raises(TypeError, match="dtype must be a floating-point dtype"):
        jax.jit(lambda k: XAVIER(k, (3, 3), jnp.int32))(KEY)
    with pytest.raises(ValueError, match="cannot compute fans"):
        jax.jit(lambda k: init.variance_scaling(1.0, "fan_in", "normal", in_axis=4)(k, (3, 3)))(KEY)


def test_traced_hyperparameters_are_not_checked_but_work():
    f = jax.jit(lambda key, s: init.variance_scaling(s, "fan_in", "normal")(key, (400, 300)))
    w = np.asarray(f(KEY, 4.0), np.float64)
    assert abs(w.var() / (4 / 400) - 1) < 6 * np.sqrt(2 / w.size)
    w = jax.jit(lambda key, lo: init.uniform(lo, 1.0)(key, (1000,)))(KEY, 0.5)
    assert float(w.min()) >= 0.5
