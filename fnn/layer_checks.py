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

from . import layers as L
from . import losses
from .gradcheck import check_grads_many


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
        "residual": (L.residual(L.Dense(5), L.Tanh()), (3, 5)),
    }


def _input(key: jax.Array, shape: tuple) -> jax.Array:
    """Random inputs away from the kinks at 0 and ±1 (|x| in [0.1, 0.9] ∪ [1.1, 2])."""
    magnitude = jax.random.uniform(key, shape, jnp.float64, 0.1, 1.9)
    magnitude = jnp.where(magnitude > 0.9, magnitude + 0.2, magnitude)
    sign = jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, shape), 1.0, -1.0)
    return sign * magnitude


def layer_objective(layer: L.Layer, state: dict, train: bool, key: jax.Array) -> Callable:
    """A scalar function of (params, x) that mixes every output of the layer."""
    def f(params, x):
        y, _ = layer.apply(params, state, x, key=key, train=train)
        weights = jnp.cos(jnp.arange(y.size, dtype=jnp.float64)).reshape(y.shape)
        return jnp.sum(jnp.sin(y) * weights)
    return f


def loss_cases(key: jax.Array) -> dict[str, tuple[Callable, tuple]]:
    logits = jax.random.normal(key, (5, 4), jnp.float64)
    labels = jnp.array([0, 3, 1, 2, 3])
    probs = jax.nn.softmax(jax.random.normal(jax.random.fold_in(key, 1), (5, 4), jnp.float64))
    targets = jax.random.normal(jax.random.fold_in(key, 2), (5, 4), jnp.float64)
    bits = jax.random.bernoulli(jax.random.fold_in(key, 3), 0.5, (5, 4)).astype(jnp.float64)
    params = {"w": logits, "b": logits[0]}
    return {
        "softmax_cross_entropy (int labels)": (lambda z: losses.softmax_cross_entropy(z, labels),
                                               (logits,)),
        "softmax_cross_entropy (probabilities)": (
            lambda z: losses.softmax_cross_entropy(z, probs), (logits,)),
        "binary_cross_entropy": (lambda z: losses.binary_cross_entropy(z, bits), (logits,)),
        "mse": (lambda z: losses.mse(z, targets), (logits,)),
        "l2_penalty": (losses.l2_penalty, (params,)),
        "l1_penalty": (losses.l1_penalty, ({"w": _input(key, (3, 4))},)),
    }


def check_all_layers(seed: int = 0, out=None, tol: float = 1e-6) -> bool:
    """Checks every layer (train and eval mode) and loss; prints a table; True if all pass."""
    out = sys.stdout if out is None else out
    key = jax.random.key(seed)
    checks, labels = {}, {}
    with jax.enable_x64(True):
        for i, (name, (layer, shape)) in enumerate(layer_cases().items()):
            k = jax.random.fold_in(key, i)
            _, params, state = layer.init(k, shape, jnp.float64)
            x = _input(jax.random.fold_in(k, 1), shape)
            for train in (True, False):
                label = f"{name} ({'train' if train else 'eval'})"
                checks[label] = (layer_objective(layer, state, train, jax.random.fold_in(k, 2)),
                                 (params, x))
                labels[label] = (name, "train" if train else "eval")
        for name, (f, args) in loss_cases(jax.random.fold_in(key, 99)).items():
            checks[name] = (f, args)
            labels[name] = (name, "-")
        # one compiled program for all of them (compiling each alone takes ~10× longer)
        reports = check_grads_many(checks, tol=tol, raise_on_failure=False)
    rows = [(*labels[label], report) for label, report in reports.items()]
    ok = all(report.passed for report in reports.values())
    width = max(len(r[0]) for r in rows)
    print(f"{'layer or loss':{width}}  mode   worst relative error  leaf", file=out)
    for name, mode, report in rows:
        verdict = "ok" if report.passed else "FAIL"
        print(f"{name:{width}}  {mode:5}  {report.max_error:20.2e}  {report.worst}  {verdict}",
              file=out)
    verdict = "all gradients match" if ok else "SOME GRADIENTS DO NOT MATCH"
    print(f"{verdict} (centered differences, eps 1e-5, tol {tol:g}, float64)", file=out)
    return ok
