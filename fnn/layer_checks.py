"""Gradient checks of every layer and loss: the ``python -m fnn gradcheck`` command.

Each layer is built small in float64 and ``f(params, x) = Σ sin(apply(params, x)) ·
weights`` is checked with :func:`fnn.gradcheck.check_grads` (every coordinate)
in training and evaluation mode, at random points away from kinks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import layers as L
from . import losses
from .gradcheck import GradCheckReport, check_grads_many

EMBEDDING_IDS = 5  # the vocabulary of the Embedding case


def layer_cases() -> dict[str, tuple[L.Layer, tuple]]:
    """Every layer with a small input shape (batch first)."""
    return {
        "Dense": (L.Dense(4), (5, 3)),
        "Conv2D": (L.Conv2D(3, 3, padding="SAME"), (2, 5, 5, 2)),
        "Conv2D stride 2, VALID, dilation 2": (L.Conv2D(2, 2, stride=2, padding="VALID",
                                                        dilation=2), (2, 7, 7, 2)),
        "MaxPool2D": (L.MaxPool2D(2), (2, 4, 4, 2)),
        "AvgPool2D SAME": (L.AvgPool2D(3, stride=2, padding="SAME"), (2, 5, 5, 2)),
        "Flatten": (L.Flatten(), (3, 2, 2, 2)),
        "Dropout": (L.Dropout(0.3), (4, 6)),
        "BatchNorm (dense)": (L.BatchNorm(), (6, 4)),
        "BatchNorm (conv)": (L.BatchNorm(), (2, 3, 3, 4)),
        "LayerNorm": (L.LayerNorm(), (3, 5)),
        "RMSNorm": (L.RMSNorm(), (3, 5)),
        "GroupNorm (dense)": (L.GroupNorm(2), (3, 6)),
        "GroupNorm (conv)": (L.GroupNorm(3), (2, 3, 2, 6)),
        # integer ids in [0, EMBEDDING_IDS): only the table is checked (ids are held fixed)
        "Embedding": (L.Embedding(EMBEDDING_IDS, 3), (4, 2)),
        "WeightNorm(Dense)": (L.WeightNorm(L.Dense(4)), (5, 3)),
        "Sigmoid": (L.Sigmoid(), (4, 3)),
        "Tanh": (L.Tanh(), (4, 3)),
        "HardTanh": (L.HardTanh(), (4, 3)),
        "SoftSign": (L.SoftSign(), (4, 3)),
        "Relu": (L.Relu(), (4, 3)),
        "LeakyRelu": (L.LeakyRelu(0.1), (4, 3)),
        "Elu": (L.Elu(), (4, 3)),
        "Gelu": (L.Gelu(), (4, 3)),
        "Softmax": (L.Softmax(), (4, 3)),
        "LogSoftmax": (L.LogSoftmax(), (4, 3)),
        "serial": (L.serial(L.Dense(4), L.Tanh(), L.Dense(2)), (3, 5)),
        # the Dense bias's gradient is 0 in exact arithmetic (BatchNorm removes shifts)
        "serial(Dense, BatchNorm, Relu)": (L.serial(L.Dense(4), L.BatchNorm(), L.Relu()), (6, 3)),
        "residual": (L.residual(L.Dense(5), L.Tanh()), (3, 5)),
        "parallel": (L.parallel(L.Dense(2), L.serial(L.BatchNorm(), L.Elu())), ((3, 4), (5, 2))),
        "Activation(swish)": (L.Activation(lambda x: x * jax.nn.sigmoid(x), "swish"), (4, 3)),
    }


def _input(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Random inputs away from the kinks at 0 and ±1 (|x| in [0.1, 0.9] ∪ [1.1, 2])."""
    magnitude = rng.uniform(0.1, 1.9, shape)
    magnitude = np.where(magnitude > 0.9, magnitude + 0.2, magnitude)
    return np.where(rng.random(shape) < 0.5, -magnitude, magnitude)


def random_variables(layer: L.Layer, shape: tuple, rng: np.random.Generator) -> tuple:
    """Float64 params ~ N(0, 1/fan) and state ~ U(0.5, 1.5) of the layer's shapes.

    Only the shapes come from ``init`` (traced with ``jax.eval_shape``): drawing the
    values with NumPy costs no compilation, and random running statistics make
    evaluation mode less trivial than BatchNorm's initial (0, 1).
    """
    _, params, state = jax.eval_shape(lambda k: layer.init(k, shape, jnp.float64),
                                      jax.random.key(0))

    def draw(spec, low=None):
        if low is not None:
            return jnp.asarray(rng.uniform(low, low + 1.0, spec.shape))
        fan = spec.shape[-2] if len(spec.shape) >= 2 else 1
        return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(fan), spec.shape))

    return (jax.tree_util.tree_map(draw, params),
            jax.tree_util.tree_map(lambda s: draw(s, 0.5), state))


def layer_objective(layer: L.Layer, state: dict, train: bool, seed: int = 0) -> Callable:
    """A scalar function of (params, x) that mixes every output of the layer.

    f = Σᵢ sin(yᵢ) cos(i) over the outputs y (of every output, for ``parallel``);
    in training, the layer's key (dropout mask) is fixed by ``seed``.
    """
    def f(params, x):
        key = jax.random.key(seed) if train else None
        y, _ = layer.apply(params, state, x, key=key, train=train)
        y = jnp.concatenate([jnp.ravel(v) for v in jax.tree_util.tree_leaves(y)])
        weights = jnp.cos(jnp.arange(y.size, dtype=y.dtype))
        return jnp.sum(jnp.sin(y) * weights)
    return f


def loss_cases(rng: np.random.Generator) -> dict[str, tuple[Callable, tuple]]:
    """Every loss and penalty at random float64 arguments (labels held fixed)."""
    logits = jnp.asarray(rng.normal(size=(5, 4)))
    labels = jnp.asarray(rng.integers(0, 4, 5))
    probs = jnp.asarray(rng.dirichlet(np.ones(4), 5))
    targets = jnp.asarray(rng.normal(size=(5, 4)))
    bits = jnp.asarray((rng.random((5, 4)) < 0.5).astype(np.float64))
    params = {"w": logits, "b": logits[0]}
    return {
        "softmax_cross_entropy (int labels)": (losses.softmax_cross_entropy, (logits, labels)),
        "softmax_cross_entropy (probabilities)": (
            lambda z: losses.softmax_cross_entropy(z, probs), (logits,)),
        "binary_cross_entropy": (lambda z: losses.binary_cross_entropy(z, bits), (logits,)),
        "mse": (lambda z: losses.mse(z, targets), (logits,)),
        "l2_penalty": (losses.l2_penalty, (params,)),
        "l1_penalty": (losses.l1_penalty, ({"w": jnp.asarray(_input(rng, (3, 4)))},)),
    }


def _shape_leaf(s) -> bool:
    return isinstance(s, tuple) and all(isinstance(d, int) for d in s)


def layer_reports(seed: int = 0, tol: float = 1e-6) -> dict[tuple[str, str], GradCheckReport]:
    """(layer or loss, "train" | "eval" | "-") -> its gradient-check report (every coordinate).

    All checks are compiled as one program (compiling each alone takes longer).
    """
    rng = np.random.default_rng(seed)
    checks = {}
    with jax.enable_x64(True):
        for i, (name, (layer, shape)) in enumerate(layer_cases().items()):
            params, state = random_variables(layer, shape, rng)
            if name == "Embedding":
                x = jnp.asarray(rng.integers(0, EMBEDDING_IDS, shape))
            else:
                x = jax.tree_util.tree_map(lambda s: jnp.asarray(_input(rng, s)), shape,
                                           is_leaf=_shape_leaf)
            for train in (True, False):
                f = layer_objective(layer, state, train, seed * 1000 + i)
                checks[(name, "train" if train else "eval")] = (f, (params, x))
        for name, (f, args) in loss_cases(rng).items():
            checks[(name, "-")] = (f, args)
        reports = check_grads_many({f"{name} ({mode})": check for (name, mode), check in
                                    checks.items()}, tol=tol, raise_on_failure=False)
    return dict(zip(checks, reports.values()))


def verdict(report: GradCheckReport) -> str:
    """"ok" or "FAIL", naming the coordinates where f is not differentiable within 2 eps."""
    text = "ok" if report.passed else "FAIL"
    if report.unresolved:
        text += " (unresolvable: " + ", ".join(f"{path} at {[row[0] for row in rows]}"
                                               for path, rows in report.unresolved.items()) + ")"
    return text


def check_all_layers(seed: int = 0, out=None, tol: float = 1e-6) -> bool:
    """Checks every layer (train and eval mode) and loss; prints a table; True if all pass."""
    out = sys.stdout if out is None else out
    reports = layer_reports(seed, tol)
    ok = all(report.passed for report in reports.values())
    width = max(len(name) for name, _ in reports)
    print(f"{'layer or loss':{width}}  mode   worst relative error  leaf", file=out)
    for (name, mode), report in reports.items():
        print(f"{name:{width}}  {mode:5}  {report.max_error:20.2e}  {report.worst}  "
              f"{verdict(report)}", file=out)
    summary = "all gradients match" if ok else "SOME GRADIENTS DO NOT MATCH"
    print(f"{summary} (centered differences, eps 1e-5, tol {tol:g}, float64)", file=out)
    return ok
