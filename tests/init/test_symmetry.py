"""Why initialization matters: zero weights never break the symmetry between hidden units.

With every weight equal (here all zero), every hidden unit of a layer computes
the same function of the input, receives the same gradient and takes the same
step, so after any number of gradient steps the layer is one unit copied n
times. Random (Xavier) weights make the units different from the start.
"""

import jax
import jax.numpy as jnp
import numpy as np

import init

HIDDEN = 8


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 5))
    y = np.argmax(x @ rng.normal(size=(5, 3)), axis=1)  # a learnable 3-class target
    return jnp.asarray(x), jnp.asarray(y)


def train(w_init, steps=200, lr=0.5):
    x, y = data()

    def forward(p):
        h = jax.nn.sigmoid(x @ p["w1"] + p["b1"])
        return h, h @ p["w2"] + p["b2"]

    def loss(p):
        z = forward(p)[1]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1))

    @jax.jit
    def step(p):  # plain gradient descent: p <- p - lr * dL/dp
        return jax.tree_util.tree_map(lambda a, g: a - lr * g, p, jax.grad(loss)(p))

    k1, k2 = jax.random.split(jax.random.key(0))
    p = {"w1": w_init(k1, (5, HIDDEN), jnp.float64), "b1": jnp.zeros(HIDDEN),
         "w2": w_init(k2, (HIDDEN, 3), jnp.float64), "b2": jnp.zeros(3)}
    for _ in range(steps):
        p = step(p)
    return p, np.asarray(forward(p)[0]), float(loss(p))


def test_zero_weights_keep_every_hidden_unit_identical():
    p, hidden, _ = train(init.zeros())
    w1, w2 = np.asarray(p["w1"]), np.asarray(p["w2"])
    assert np.abs(w1).max() > 0.1 and np.abs(w2).max() > 0.1  # training did move the weights
    np.testing.assert_allclose(w1, np.repeat(w1[:, :1], HIDDEN, axis=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(w2, np.repeat(w2[:1], HIDDEN, axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(p["b1"]), np.full(HIDDEN, float(p["b1"][0])), atol=1e-12)
    np.testing.assert_allclose(hidden, np.repeat(hidden[:, :1], HIDDEN, axis=1), atol=1e-12)


def test_xavier_weights_make_hidden_units_differ_and_learn_more():
    p, hidden, xavier_loss = train(init.xavier_uniform())
    w1 = np.asarray(p["w1"])
    scale = np.linalg.norm(w1, axis=0).mean()
    for i in range(HIDDEN):
        for j in range(i + 1, HIDDEN):
            assert np.linalg.norm(w1[:, i] - w1[:, j]) > 0.1 * scale
            assert abs(np.corrcoef(hidden[:, i], hidden[:, j])[0, 1]) < 0.999
    # eight different features fit the 3-class target better than one feature copied eight times
    _, _, zero_loss = train(init.zeros())
    assert xavier_loss < 0.8 * zero_loss, (xavier_loss, zero_loss)
