"""fnn.gradcheck, bad input: the right exception at the call, naming the argument and what was
expected (check_grads, check_grads_many, numerical_grad)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn.gradcheck import check_grads, check_grads_many, numerical_grad

X = jnp.array([0.3, 0.7])


def square_sum(x):
    return jnp.sum(x**2)


# (id, call, exception, a regex the message must match: the argument and the expectation)
BAD = [
    # key
    ("key a string", lambda: check_grads(square_sum, X, key="seed"), TypeError,
     r"check_grads: key must be a PRNG key \(e.g. jax.random.key\(0\)\), an int seed or None; "
     r"got str 'seed'"),
    ("key a float", lambda: check_grads(square_sum, X, key=1.5), TypeError,
     r"key must be a PRNG key.*got float 1.5"),
    ("key a bool", lambda: check_grads(square_sum, X, key=True), TypeError,
     r"key must be .*got bool True"),
    ("key a batch of keys", lambda: check_grads(square_sum, X, mode="directional",
                                                key=jax.random.split(jax.random.key(0), 2)),
     TypeError, r"key must be a PRNG key.*got an array of dtype key<fry> and shape \(2,\)"),
    ("key a float array", lambda: check_grads(square_sum, X, key=jnp.zeros(2)), TypeError,
     r"key must be a PRNG key.*dtype float"),
    # eps, tol, tiny
    ("eps zero", lambda: check_grads(square_sum, X, eps=0.0), ValueError,
     r"check_grads: eps must be a finite number > 0; got 0.0"),
    ("eps negative", lambda: check_grads(square_sum, X, eps=-1e-5), ValueError,
     r"eps must be a finite number > 0"),
    ("eps inf", lambda: check_grads(square_sum, X, eps=float("inf")), ValueError,
     r"eps must be a finite number > 0; got inf"),
    ("eps nan", lambda: check_grads(square_sum, X, eps=float("nan")), ValueError,
     r"eps must be a finite number > 0; got nan"),
    ("eps a bool", lambda: check_grads(square_sum, X, eps=True), TypeError,
     r"eps must be a number > 0; got bool True"),
    ("eps a string", lambda: check_grads(square_sum, X, eps="1e-5"), TypeError,
     r"eps must be a number > 0; got str '1e-5'"),
    ("tol zero", lambda: check_grads(square_sum, X, tol=0.0), ValueError,
     r"check_grads: tol must be a finite number > 0; got 0.0"),
    ("tol negative", lambda: check_grads(square_sum, X, tol=-1.0), ValueError,
     r"tol must be a finite number > 0; got -1.0"),
    ("tol inf passes everything", lambda: check_grads(square_sum, X, tol=float("inf")),
     ValueError, r"tol must be a finite number > 0; got inf"),
    ("tiny zero", lambda: check_grads(square_sum, X, tiny=0.0), ValueError,
     r"tiny must be a finite number > 0; got 0.0"),
    ("tiny a string", lambda: check_grads(square_sum, X, tiny="auto"), TypeError,
     r"tiny must be a number > 0 or None; got str 'auto'"),
    # mode, order, unresolvable
    ("mode unknown", lambda: check_grads(square_sum, X, mode="fast"), ValueError,
     r"check_grads: mode must be 'full' or 'directional'; got 'fast'"),
    ("mode None", lambda: check_grads(square_sum, X, mode=None), ValueError,
     r"mode must be 'full' or 'directional'; got None"),
    ("order 3", lambda: check_grads(square_sum, X, order=3), ValueError,
     r"order must be 1 or 2; got 3"),
    ("order True", lambda: check_grads(square_sum, X, order=True), ValueError,
     r"order must be 1 or 2; got True"),
    ("unresolvable unknown", lambda: check_grads(square_sum, X, unresolvable="skip"), ValueError,
     r"unresolvable must be 'raise' or 'ignore'; got 'skip'"),
    # counts
    ("num_directions zero", lambda: check_grads(square_sum, X, mode="directional",
                                                num_directions=0), ValueError,
     r"num_directions must be an int >= 1; got 0"),
    ("num_directions a float", lambda: check_grads(square_sum, X, num_directions=2.0), TypeError,
     r"num_directions must be an int >= 1; got float 2.0"),
    ("batch_size zero", lambda: check_grads(square_sum, X, batch_size=0), ValueError,
     r"batch_size must be an int >= 1; got 0"),
    # argnums
    ("argnums out of range", lambda: check_grads(square_sum, X, argnums=3), ValueError,
     r"argnums 3 out of range: expected ints from 0 to 0 \(f gets 1 arguments\)"),
    ("argnums negative", lambda: check_grads(lambda a, b: a @ b, X, X, argnums=-1), ValueError,
     r"argnums -1 out of range: expected ints from 0 to 1"),
    ("argnums a string", lambda: check_grads(square_sum, X, argnums="0"), TypeError,
     r"argnums must be an int or a non-empty sequence of ints from 0 to 0"),
    ("argnums empty", lambda: check_grads(square_sum, X, argnums=()), TypeError,
     r"argnums must be an int or a non-empty sequence"),
    ("argnums a float", lambda: check_grads(square_sum, X, argnums=0.0), TypeError,
     r"argnums must be an int .*got 0.0"),
    ("argnums on integer labels", lambda: check_grads(lambda p, y: p["w"][y], {"w": X},
                                                      jnp.array(1), argnums=1),
     ValueError, r"no float leaves to check in the arguments \(1,\)"),
    # f and its arguments
    ("f not callable", lambda: check_grads(jnp.ones(2), X), TypeError,
     r"check_grads: f must be a function"),
    ("no arguments", lambda: check_grads(square_sum), ValueError, r"pass the arguments"),
    ("string argument", lambda: check_grads(lambda p, s: jnp.sum(p), X, "relu"), TypeError,
     r"check_grads: args\[1\] must be a real array or number; got str: 'relu'"),
    ("complex argument", lambda: check_grads(lambda z: jnp.sum(jnp.abs(z)), X + 1j), TypeError,
     r"args\[0\] must be a real array or number; got dtype complex"),
    ("nested string leaf", lambda: check_grads(lambda p: jnp.sum(p["w"]), {"w": X, "act": "x"}),
     TypeError, r"args\[0\]\['act'\] must be a real array or number"),
    ("f returns None", lambda: check_grads(lambda x: None, X), ValueError,
     r"f must return an array or a pytree of arrays; got None"),
    ("f returns a string", lambda: check_grads(lambda x: "loss", X), TypeError,
     r"f must return real-valued arrays \(a float loss\); got an output of str 'loss'"),
    ("f returns complex", lambda: check_grads(lambda x: jnp.sum(x) * 1j, X), TypeError,
     r"f must return real-valued arrays.*dtype complex"),
    ("f is nan at the point", lambda: check_grads(lambda x: jnp.sum(jnp.log(x - 0.3)), X),
     ValueError, r"f is not finite at the given arguments"),
    # check_grads_many
    ("checks not a dict", lambda: check_grads_many([(jnp.sin, (X,))]), TypeError,
     r"check_grads_many: checks must be a dict name -> \(f, args\); got list"),
    ("a check not a pair", lambda: check_grads_many({"a": square_sum}), TypeError,
     r"check_grads\['a'\]: expected \(f, args\)"),
    ("many: bad eps", lambda: check_grads_many({"a": (square_sum, (X,))}, eps=-1.0), ValueError,
     r"check_grads_many: eps must be a finite number > 0"),
    ("many: names the bad check", lambda: check_grads_many(
        {"good": (square_sum, (X,)), "bad": (lambda x: None, (X,))}), ValueError,
     r"check_grads\['bad'\]: f must return an array"),
    # numerical_grad
    ("ng: f not callable", lambda: numerical_grad("loss", X), TypeError,
     r"numerical_grad: f must be a function"),
    ("ng: vector output", lambda: numerical_grad(lambda x: x, X), ValueError,
     r"numerical_grad: f must return a float scalar \(a loss\); got an array of shape \(2,\)"),
    ("ng: eps negative", lambda: numerical_grad(square_sum, X, eps=-1e-5), ValueError,
     r"numerical_grad: eps must be a finite number > 0; got -1e-05"),
    ("ng: integer x", lambda: numerical_grad(square_sum, jnp.arange(3)), TypeError,
     r"numerical_grad: x must be a float array .*got dtype int"),
    ("ng: integer leaf", lambda: numerical_grad(lambda t: jnp.sum(t["a"]),
                                                {"a": X, "n": np.int32(3)}), TypeError,
     r"numerical_grad: x\['n'\] must be a float array"),
    ("ng: nan at x", lambda: numerical_grad(lambda x: jnp.sum(jnp.log(x - 0.3)), X), ValueError,
     r"numerical_grad: f\(x\) is -inf; the gradient by differences needs f finite at x"),
    ("ng: batch_size zero", lambda: numerical_grad(square_sum, X, batch_size=0), ValueError,
     r"numerical_grad: batch_size must be an int >= 1"),
]


@pytest.mark.parametrize("make, error, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(make, error, message):
    with pytest.raises(error, match=message):
        make()


# the good neighbours of the cases above: accepted, and the results right
def test_numpy_and_array_numbers_and_keys_are_accepted():
    reference = check_grads(square_sum, X, mode="directional", key=7)
    for key in (np.int64(7), 7 + 2**62):  # the same seed
        assert check_grads(square_sum, X, mode="directional", key=key).errors == reference.errors
    for key in (jax.random.key(3), jax.random.PRNGKey(3), -5):
        assert check_grads(square_sum, X, mode="directional", key=key).passed
    report = check_grads(square_sum, X, eps=np.float32(1e-5), tol=jnp.asarray(1e-6),
                         argnums=np.int64(0), num_directions=np.int64(2))
    assert report.passed and report.tol == 1e-6


def test_numerical_grad_of_integer_labels_held_in_a_closure_is_right():
    labels = jnp.array([1, 0])
    g = numerical_grad(lambda x: jnp.sum(x[labels] ** 2), X)
    np.testing.assert_allclose(g, 2 * np.asarray(X), rtol=1e-9)
