"""Compiled, batched evaluation: :func:`evaluate` and the evaluator :func:`fnn.train.fit` keeps.

Each batch runs one compiled program that adds ``metric × batch size`` to
running totals on the device (one program per distinct batch shape); the
totals come to the host once, at the end, and are divided by the number of
examples: the means are exact for a ragged last batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import optimizers as opt

from ._step import TrainState, check_callable, check_state
from ._stream import Prefetcher, check_batch, is_stream
from .data import _check_finite, _check_int, _num_examples


def eval_params(owner: str, state: TrainState, which: Any) -> Any:
    """The params to evaluate: the state's (``None``/``"params"``), the optimizer's average
    (``"ema"``, from an ``optimizers.ema`` link), or a params pytree given as is."""
    if which is None or (isinstance(which, str) and which == "params"):
        return state.unpacked_params()
    if isinstance(which, str):
        if which != "ema":
            raise ValueError(f"{owner}: params to evaluate must be 'params' or 'ema' (the "
                             f"average of optimizers.ema); got {which!r}.")
        try:
            average = opt.averaged_params(state.opt_state, state.params)
        except ValueError as error:
            raise ValueError(
                f"{owner}: evaluating the averaged params ('ema') needs an optimizer with an "
                "ema link, e.g. optimizers.chain(optimizers.adam(1e-3), optimizers.ema(0.999)), "
                f"and a state made with it; {error}") from None
        return opt.unpack(average) if isinstance(average, opt.Packed) else average
    return which


def _metrics_of(owner: str, eval_fn: Callable, params, model_state, batch) -> dict:
    metrics = eval_fn(params, model_state, batch)
    if not isinstance(metrics, dict):
        raise TypeError(f"{owner}: eval_fn must return a dict of metrics; got "
                        f"{type(metrics).__name__}.")
    return metrics


# Module level, with eval_fn static: jax's own cache keeps one program per (eval_fn, batch
# shape), so a second fit or evaluate with the same eval_fn compiles nothing.
@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=2)
def _accumulate(owner: str, eval_fn: Callable, totals, params, model_state, batch) -> dict:
    size = jax.tree_util.tree_leaves(batch)[0].shape[0]
    metrics = _metrics_of(owner, eval_fn, params, model_state, batch)
    return {k: totals[k] + jnp.asarray(v).astype(totals[k].dtype) * jnp.float32(size)
            for k, v in metrics.items()}


class Evaluator:
    """``evaluator(params, model_state, data, batch_size) -> dict`` of weighted metric means.

    Runs one jitted accumulation of ``eval_fn`` (compiled once per eval_fn and batch
    shape and reused across calls, e.g. after every epoch and by every later
    :func:`fnn.train.fit` with the same eval_fn).
    """

    def __init__(self, owner: str, eval_fn: Callable, prefetch_size: int = 2):
        check_callable(owner, "eval_fn", eval_fn)
        self.owner, self.eval_fn, self.prefetch_size = owner, eval_fn, prefetch_size

    def _metrics_of(self, params, model_state, batch):
        return _metrics_of(self.owner, self.eval_fn, params, model_state, batch)

    def _accumulate(self, totals, params, model_state, batch):
        return _accumulate(self.owner, self.eval_fn, totals, params, model_state, batch)

    def _totals(self, params: Any, model_state: Any, batch: Any) -> dict:
        shapes = jax.eval_shape(self._metrics_of, params, model_state, batch)
        for k, v in shapes.items():
            if v.shape != ():
                raise TypeError(f"{self.owner}: eval_fn's metric {k!r} must be a scalar (a mean "
                                f"over the batch); got shape {v.shape}.")
        return {k: jnp.zeros((), jnp.promote_types(v.dtype, jnp.float32))
                for k, v in shapes.items()}

    def __call__(self, params: Any, model_state: Any, data: Any, batch_size: int | None,
                 check: Callable[[int, Any], None] | None = None) -> dict:
        totals, examples = None, 0
        with Prefetcher(_batches(self.owner, data, batch_size), self.prefetch_size, None,
                        None if check is None else _numbered(check)) as ready:
            for batch in ready:
                if totals is None:
                    totals = self._totals(params, model_state, batch)
                totals = self._accumulate(totals, params, model_state, batch)
                examples += jax.tree_util.tree_leaves(batch)[0].shape[0]
        if not examples:
            raise ValueError(f"{self.owner}: the evaluation data hold no examples.")
        return {k: float(np.asarray(v, np.float64)) / examples for k, v in totals.items()}


def _numbered(check: Callable[[int, Any], None]) -> Callable[[Any], Any]:
    count = iter(range(1 << 62))

    def transform(batch):
        check(next(count), batch)
        return batch
    return transform


def _batches(owner: str, data: Any, batch_size: int | None) -> Iterable:
    """The batches of ``data``: slices of arrays, or what an iterable (or a function of no
    arguments returning one) yields."""
    if not is_stream(data):
        n = _num_examples(owner, data)
        size = n if batch_size is None else batch_size
        return (jax.tree_util.tree_map(lambda x, i=i: x[i:i + size], data)
                for i in range(0, n, size))
    if batch_size is not None:
        raise TypeError(f"{owner}: batch_size applies to array data; iterable data yield their "
                        f"own batches (got batch_size={batch_size!r}).")
    made = data() if callable(data) else data
    if isinstance(made, (str, bytes)) or not hasattr(made, "__iter__"):
        raise TypeError(f"{owner}: the evaluation data must be arrays, an iterable of batches or "
                        f"a function returning one; got {type(made).__name__}.")
    return made


def evaluate(eval_fn: Callable[[Any, Any, Any], dict], state: TrainState, data: Any,
             batch_size: int | None = None, *, params: Any = None) -> dict:
    """Metrics of ``eval_fn(params, model_state, batch) -> dict`` over ``data``, compiled.

    For batches b with n_b examples and per-batch means m_b (what ``eval_fn``
    returns), the result is Σ_b n_b m_b / Σ_b n_b: the mean over all examples,
    exact for a smaller last batch. Each batch runs one compiled program (one
    compilation per distinct batch shape: two when the last batch is smaller)
    that adds n_b m_b to totals kept on the device; the batches are moved to
    the device by a background thread (:func:`fnn.train.prefetch`). Concrete
    array data are checked once on the host (finite values, ``eval_fn.check_data``,
    e.g. the labels of :func:`fnn.train.classifier`); batches from an iterable
    are checked as they are drawn.

    Args:
      eval_fn: ``eval_fn(params, model_state, batch) -> dict`` of scalar means over the batch.
      state: a :class:`fnn.train.TrainState`.
      data: an array or pytree of arrays (host or device) with a shared first
        axis; or an iterable of batches; or a function of no arguments returning one.
      batch_size: with array data, examples per batch (default: all in one batch).
      params: the params to evaluate: ``None`` (the state's), ``"ema"`` (the
        average kept by an ``optimizers.ema`` link of the optimizer) or a params pytree.

    Example:
        >>> fnn.train.evaluate(eval_fn, state, (x_val, y_val), batch_size=256)["accuracy"]
        >>> fnn.train.evaluate(eval_fn, state, (x_val, y_val), params="ema")
    """
    check_callable("evaluate", "eval_fn", eval_fn)
    check_state("evaluate", state)
    if batch_size is not None:
        batch_size = _check_int("evaluate", "batch_size", batch_size, 1)
    params = eval_params("evaluate", state, params)
    check = None
    if is_stream(data):
        check = batch_checker("evaluate", "data", eval_fn, params, state.model_state)
    else:
        if _num_examples("evaluate", data) == 0:
            raise ValueError("evaluate: data holds no examples.")
        _check_finite("evaluate", "data", data)
        check_data = getattr(eval_fn, "check_data", None)
        if check_data is not None:
            check_data("evaluate", "data", data, params, state.model_state)
    return Evaluator("evaluate", eval_fn)(params, state.model_state, data, batch_size, check)


def batch_checker(owner: str, name: str, fn: Any, params: Any,
                  model_state: Any) -> Callable[[int, Any], None]:
    """Checks of one evaluation batch drawn from an iterable: finite values, ``fn.check_data``."""
    check_data = getattr(fn, "check_data", None)

    def check(i: int, batch: Any) -> None:
        check_batch(owner, f"{name} (batch {i})", batch, check_data, params, model_state)
    return check
