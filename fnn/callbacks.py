"""Callbacks for :func:`fnn.train.fit`: logging every k steps, early stopping, orbax checkpoints.

A callback is an object with any of three methods (subclass :class:`Callback`,
whose methods do nothing):

* ``on_step(step, metrics)`` for every step that is a multiple of its
  ``every`` attribute (``step`` counts optimizer steps, from 1; ``metrics``:
  that step's metrics as floats). With streamed data (:func:`fnn.train.fit`
  given an iterable) it is called while the epoch runs, after each compiled
  chunk of steps; with in-memory array data, whose epoch is one compiled
  program, after the epoch;
* ``on_epoch_end(epoch, state, history) -> bool``: after each epoch's metrics
  (and validation) are in ``history``; return True to stop training;
* ``on_train_end(state, history) -> state or None``: after the last epoch; a
  returned state replaces the one ``fit`` returns (early stopping returns its best).

Example:
    >>> stop = fnn.callbacks.EarlyStopping("val_loss", patience=3)
    >>> save = fnn.callbacks.Checkpoint("ckpt", every_epochs=5)
    >>> state, history = fnn.train.fit(loss_fn, tx, state, (x, y), key=key, epochs=100,
    ...     batch_size=64, val_data=(xv, yv), eval_fn=eval_fn,
    ...     callbacks=[fnn.callbacks.LogEvery(100), stop, save])
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from .data import _check_int

__all__ = ["Callback", "Checkpoint", "EarlyStopping", "LogEvery", "restore_checkpoint"]


class Callback:
    """Base class: ``on_step`` (every ``every`` steps; ``None``: never), ``on_epoch_end``,
    ``on_train_end``; each does nothing unless overridden."""

    every: int | None = None

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """Called for steps that are multiples of ``every``."""

    def on_epoch_end(self, epoch: int, state: Any, history: dict) -> bool:
        """Called after each epoch; return True to stop training."""
        return False

    def on_train_end(self, state: Any, history: dict) -> Any:
        """Called after training; a returned state replaces the one fit returns."""
        return None


class LogEvery(Callback):
    """Logs the step's metrics every ``every`` optimizer steps: ``step 200: loss 0.31 …``.

    Example:
        >>> fnn.train.fit(..., callbacks=[fnn.callbacks.LogEvery(100)])
    """

    def __init__(self, every: int, log: Callable[[str], None] = print):
        self.every = _check_int("LogEvery", "every", every, 1)
        if not callable(log):
            raise TypeError(f"LogEvery: log must be a function of a string; got {log!r}.")
        self.log = log

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.log(f"step {step}: " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


class EarlyStopping(Callback):
    """Stops when ``history[monitor]`` has not improved for ``patience`` epochs; keeps the best.

    An epoch improves on the best value b when its value v < b − min_delta
    (``mode="min"``) or v > b + min_delta (``mode="max"``). With ``restore_best``
    (default) a copy of the state after the best epoch is kept (one more copy
    of the state in device memory) and :func:`fnn.train.fit` returns it, not
    the last state. After training, ``best``, ``best_epoch`` and
    ``stopped_epoch`` (``None`` if it never stopped) say what happened.

    Args:
      monitor: a key of fit's history, e.g. ``"val_loss"`` or ``"val_accuracy"``.
      patience: epochs without improvement to tolerate (an int >= 0).
      mode: ``"min"`` or ``"max"``.
      min_delta: the least change that counts as an improvement (>= 0).
      restore_best: return the best state rather than the last.

    Example:
        >>> stop = fnn.callbacks.EarlyStopping("val_accuracy", patience=5, mode="max")
        >>> state, history = fnn.train.fit(..., callbacks=[stop])   # the best epoch's state
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, mode: str = "min",
                 min_delta: float = 0.0, restore_best: bool = True):
        if not isinstance(monitor, str):
            raise TypeError(f"EarlyStopping: monitor must be a history key such as 'val_loss'; "
                            f"got {monitor!r}.")
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max'; got {mode!r}.")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) \
                or not 0 <= min_delta < math.inf:
            raise ValueError(f"EarlyStopping: min_delta must be a finite number >= 0; got "
                             f"{min_delta!r}.")
        if not isinstance(restore_best, bool):
            raise TypeError(f"EarlyStopping: restore_best must be True or False; got "
                            f"{restore_best!r}.")
        self.monitor, self.mode, self.min_delta = monitor, mode, float(min_delta)
        self.patience = _check_int("EarlyStopping", "patience", patience, 0)
        self.restore_best = restore_best
        self.best, self.best_epoch, self.stopped_epoch = None, None, None
        self._best_state, self._waited = None, 0

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return not math.isnan(value)
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch: int, state: Any, history: dict) -> bool:
        if self.monitor not in history:
            raise KeyError(f"EarlyStopping: history has no {self.monitor!r}; it has "
                           f"{sorted(history)} (val_* needs val_data and eval_fn).")
        value = float(history[self.monitor][-1])
        if self._improves(value):
            self.best, self.best_epoch, self._waited = value, epoch, 0
            if self.restore_best:  # a copy: the next epoch donates (consumes) the state
                self._best_state = jax.tree_util.tree_map(
                    lambda x: x.copy() if isinstance(x, jax.Array) else x, state)
            return False
        self._waited += 1
        if self._waited > self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, state: Any, history: dict) -> Any:
        best, self._best_state = self._best_state, None
        return best if self.restore_best else None


def _orbax(owner: str) -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ImportError(f"{owner}: checkpoints are written with orbax, which is not installed; "
                          "pip install orbax-checkpoint.") from None
    return ocp


def _manager(ocp: Any, directory: str, max_to_keep: int | None) -> Any:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=options)


class Checkpoint(Callback):
    """Saves the training state with orbax every ``every_epochs`` epochs, under its step count.

    Saved after epochs e with (e + 1) a multiple of ``every_epochs`` (epochs counted
    as :func:`fnn.train.fit` counts them, from the state's step), synchronously
    (the next epoch consumes the state). :func:`restore_checkpoint` reads the
    latest back; ``fit`` continued from it (same key and data) finishes as an
    uninterrupted run would. orbax-checkpoint is imported only when a
    checkpoint is written.

    Args:
      directory: where the checkpoints go (one subdirectory per saved step).
      every_epochs: save every this many epochs (an int >= 1).
      max_to_keep: keep only the newest this many (default: all).

    Example:
        >>> fit(..., epochs=10, callbacks=[fnn.callbacks.Checkpoint("/tmp/run", every_epochs=2)])
        >>> state = fnn.callbacks.restore_checkpoint("/tmp/run", state)  # the latest save
    """

    def __init__(self, directory: str | os.PathLike, every_epochs: int = 1,
                 max_to_keep: int | None = None):
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"Checkpoint: directory must be a path; got {directory!r}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.every_epochs = _check_int("Checkpoint", "every_epochs", every_epochs, 1)
        self.max_to_keep = None if max_to_keep is None else \
            _check_int("Checkpoint", "max_to_keep", max_to_keep, 1)
        self.saved: list[int] = []  # the steps saved by this callback
        self._open = None

    def on_epoch_end(self, epoch: int, state: Any, history: dict) -> bool:
        if (epoch + 1) % self.every_epochs:
            return False
        ocp = _orbax("Checkpoint")
        if self._open is None:
            self._open = _manager(ocp, self.directory, self.max_to_keep)
        step = int(state.step)
        self._open.save(step, args=ocp.args.StandardSave(state), force=True)
        self.saved.append(step)
        return False

    def on_train_end(self, state: Any, history: dict) -> Any:
        if self._open is not None:
            self._open.wait_until_finished()
            self._open.close()
            self._open = None
        return None


def restore_checkpoint(directory: str | os.PathLike, like: Any, step: int | None = None) -> Any:
    """The state saved by :class:`Checkpoint` at ``step`` (default: the latest).

    ``like`` gives the structure, dtypes and placement to restore into: the
    state training started from, or ``jax.eval_shape`` of one.

    Example:
        >>> state = fnn.callbacks.restore_checkpoint("/tmp/run", state)
    """
    ocp = _orbax("restore_checkpoint")
    directory = os.path.abspath(os.fspath(directory))
    with _manager(ocp, directory, None) as manager:
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"restore_checkpoint: no checkpoints in {directory}.")
        if step is None:
            step = manager.latest_step()
        elif step not in steps:
            raise ValueError(f"restore_checkpoint: no checkpoint of step {step} in {directory}; "
                             f"saved steps: {sorted(steps)}.")

        def abstract(x):
            if isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
                return jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                            sharding=getattr(x, "sharding", None))
            return x
        target = jax.tree_util.tree_map(abstract, like)
        return manager.restore(step, args=ocp.args.StandardRestore(target))


class StepHooks:
    """Calls the callbacks' ``on_step`` for the steps of a chunk that are due; reads the
    metrics from the device only when one is."""

    def __init__(self, callbacks: Sequence[Any]):
        self.callbacks = [c for c in callbacks if getattr(c, "every", None)]

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def __call__(self, done: int, metrics: dict) -> None:
        """``done``: steps taken before the chunk; ``metrics``: name -> (steps in the chunk,)."""
        length = len(next(iter(metrics.values()))) if metrics else 0
        due = [(s, c) for s in range(done + 1, done + length + 1) for c in self.callbacks
               if s % c.every == 0]
        if not due:
            return
        host = {k: np.asarray(v) for k, v in metrics.items()}
        for s, c in due:
            c.on_step(s, {k: float(v[s - done - 1]) for k, v in host.items()})


def check_callbacks(owner: str, callbacks: Any) -> list:
    """The callbacks as a list; each must have at least one of the callback methods."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"{owner}: callbacks must be a list of callbacks (see fnn.callbacks); "
                        f"got {type(callbacks).__name__}.")
    for i, c in enumerate(callbacks):
        if not any(callable(getattr(c, m, None)) for m in
                   ("on_step", "on_epoch_end", "on_train_end")):
            raise TypeError(f"{owner}: callbacks[{i}] ({type(c).__name__}) has none of on_step, "
                            "on_epoch_end, on_train_end; subclass fnn.callbacks.Callback.")
        every = getattr(c, "every", None)
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                  or every < 1):
            raise ValueError(f"{owner}: callbacks[{i}].every must be None or an int >= 1; got "
                             f"{every!r}.")
    return list(callbacks)
