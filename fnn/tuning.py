"""Hyperparameter search: spaces, grid and random search, coarse-to-fine, many models at once.

A *space* is a dict from hyperparameter name to a dimension::

    space = {"learning_rate": log_uniform(1e-4, 1e-1), "weight_decay": log_uniform(1e-6, 1e-2)}

:func:`random_search` samples it (on a log scale for ``log_uniform``: each
decade equally likely), :func:`grid_search` lays a grid over it, :func:`refine`
narrows it around the best trials (coarse-to-fine). An objective maps a config
to a dict of metrics ("panda": one model at a time) or, with ``batched=True``, a
list of configs to a list of metric dicts; :func:`parallel_fit` is such a batched
objective that trains every configuration in one compiled program with
``jax.vmap`` over hyperparameters kept as data ("caviar").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import optimizers as opt
from optimizers import _validate

from . import sharding as _sharding
from . import train as _train
from .data import _check_int, _check_key, _check_number

# ------------------------------------------------------------------ dimensions


class Uniform(NamedTuple):
    """Uniform on [low, high]."""

    low: float
    high: float

    def sample(self, key: jax.Array, n: int) -> list[float]:
        unit = np.asarray(jax.random.uniform(key, (n,), jnp.float32), np.float64)
        return [float(self.low + u * (self.high - self.low)) for u in unit]

    def grid(self, points: int) -> list[float]:
        return [float(v) for v in np.linspace(self.low, self.high, points)]

    def around(self, values: Sequence[float], margin: float) -> Uniform:
        width = (max(values) - min(values)) or (self.high - self.low) * margin
        low = max(self.low, min(values) - margin * width)
        high = min(self.high, max(values) + margin * width)
        return Uniform(low, high)


class LogUniform(NamedTuple):
    """Log-uniform on [low, high]: log(x) is uniform, so every decade is equally likely."""

    low: float
    high: float

    def sample(self, key: jax.Array, n: int) -> list[float]:
        exponents = np.asarray(jax.random.uniform(key, (n,), jnp.float32), np.float64)
        # exp(log(x)) need not round-trip: clamp, so no sample falls outside [low, high]
        return [min(self.high, max(self.low, math.exp(math.log(self.low)
                                                      + e * math.log(self.high / self.low))))
                for e in exponents]

    def grid(self, points: int) -> list[float]:
        return [float(v) for v in np.geomspace(self.low, self.high, points)]

    def around(self, values: Sequence[float], margin: float) -> LogUniform:
        logs = [math.log(v) for v in values]
        width = (max(logs) - min(logs)) or math.log(self.high / self.low) * margin
        low = max(math.log(self.low), min(logs) - margin * width)
        high = min(math.log(self.high), max(logs) + margin * width)
        # clip after exp too: exp(log(high)) may round above high
        return LogUniform(max(self.low, math.exp(low)), min(self.high, math.exp(high)))


class Integers(NamedTuple):
    """Integers in [low, high] (both included)."""

    low: int
    high: int

    def sample(self, key: jax.Array, n: int) -> list[int]:
        return [int(v) for v in jax.random.randint(key, (n,), self.low, self.high + 1)]

    def grid(self, points: int) -> list[int]:
        return sorted({int(round(v)) for v in np.linspace(self.low, self.high, points)})

    def around(self, values: Sequence[int], margin: float) -> Integers:
        width = max(1, max(values) - min(values))
        return Integers(max(self.low, int(math.floor(min(values) - margin * width))),
                        min(self.high, int(math.ceil(max(values) + margin * width))))


class Choice(NamedTuple):
    """One of a fixed list of options."""

    options: tuple

    def sample(self, key: jax.Array, n: int) -> list[Any]:
        return [self.options[int(i)] for i in jax.random.randint(key, (n,), 0, len(self.options))]

    def grid(self, points: int) -> list[Any]:
        return list(self.options)

    def around(self, values: Sequence[Any], margin: float) -> Choice:
        return Choice(tuple(o for o in self.options if o in values))


def _check_range(owner: str, low: float, high: float, positive: bool = False) -> None:
    low, high = _check_number(owner, "low", low), _check_number(owner, "high", high)
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise ValueError(f"{owner}: need finite low < high; got low={low!r}, high={high!r}.")
    if positive and low <= 0:
        raise ValueError(f"{owner}: a log scale needs low > 0; got low={low!r}.")


def uniform(low: float, high: float) -> Uniform:
    """A dimension sampled uniformly on [low, high]. Example: ``uniform(0.0, 0.5)``."""
    _check_range("uniform", low, high)
    return Uniform(float(low), float(high))


def log_uniform(low: float, high: float) -> LogUniform:
    """A dimension sampled on a log scale: x = exp(u), u ~ U[log low, log high].

    Use it for learning rates and regularization strengths, whose useful values
    span decades. Example: ``log_uniform(1e-4, 1e-1)``.
    """
    _check_range("log_uniform", low, high, positive=True)
    return LogUniform(float(low), float(high))


def integers(low: int, high: int) -> Integers:
    """A dimension of integers in [low, high]. Example: ``integers(32, 256)``."""
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (low, high)):
        raise TypeError(f"integers: low and high must be ints; got {low!r}, {high!r}.")
    _check_range("integers", low, high)
    return Integers(int(low), int(high))


def choice(options: Sequence[Any]) -> Choice:
    """A dimension that takes one of ``options``. Example: ``choice(["sgd", "adam"])``."""
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        raise TypeError(f"choice: options must be a list or tuple of values; got "
                        f"{type(options).__name__} {options!r}.")
    options = tuple(options)
    if not options:
        raise ValueError("choice: options must not be empty.")
    return Choice(options)


DIMENSIONS = (Uniform, LogUniform, Integers, Choice)


def _check_space(owner: str, space: dict) -> None:
    if not isinstance(space, dict) or not space:
        raise TypeError(f"{owner}: space must be a non-empty dict of name -> dimension.")
    for name, dim in space.items():
        if not isinstance(dim, DIMENSIONS):
            raise TypeError(
                f"{owner}: space[{name!r}] must be a dimension (uniform, log_uniform, integers or "
                f"choice); got {dim!r}."
            )


# ------------------------------------------------------------------ configurations


def sample(space: dict, key: jax.Array, n: int) -> list[dict]:
    """``n`` random configurations of ``space`` (one independent key per dimension).

    Example:
        >>> sample({"learning_rate": log_uniform(1e-4, 1e-1)}, jax.random.key(0), 8)
    """
    _check_space("sample", space)
    _check_key("sample", key)
    n = _check_int("sample", "n", n, 1)
    columns = {name: dim.sample(jax.random.fold_in(key, i), n)
               for i, (name, dim) in enumerate(space.items())}
    return [{name: columns[name][j] for name in space} for j in range(n)]


def grid(space: dict, points: int = 3) -> list[dict]:
    """Every combination of ``points`` values per dimension (log-spaced for log_uniform).

    Example:
        >>> grid({"learning_rate": log_uniform(1e-3, 1e-1)}, points=3)  # 1e-3, 1e-2, 1e-1
    """
    _check_space("grid", space)
    points = _check_int("grid", "points", points, 1)
    axes = {name: dim.grid(points) for name, dim in space.items()}
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


# ------------------------------------------------------------------ results


class Trial(NamedTuple):
    config: dict
    metrics: dict


class Results(list):
    """Trials sorted best first by ``metric``; ``table()`` formats them."""

    def __init__(self, trials: Sequence[Trial], metric: str, mode: str):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min'; got {mode!r}.")
        for t in trials:
            if metric not in t.metrics:
                raise KeyError(f"metric {metric!r} is not among the metrics {sorted(t.metrics)}.")
        key = (lambda t: -t.metrics[metric]) if mode == "max" else (lambda t: t.metrics[metric])
        super().__init__(sorted(trials, key=lambda t: (math.isnan(t.metrics[metric]), key(t))))
        self.metric, self.mode = metric, mode

    @property
    def best(self) -> Trial:
        return self[0]

    def table(self, limit: int | None = None) -> str:
        """A plain-text table, best first."""
        rows = self[:limit] if limit else list(self)
        if not rows:
            return "(no trials)"
        config_keys = list(rows[0].config)
        metric_keys = [self.metric] + [k for k in rows[0].metrics if k != self.metric]
        header = ["#"] + config_keys + metric_keys
        body = [[str(i + 1)] + [_fmt(t.config[k]) for k in config_keys]
                + [_fmt(t.metrics[k]) for k in metric_keys] for i, t in enumerate(rows)]
        widths = [max(len(r[c]) for r in [header] + body) for c in range(len(header))]
        lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in body]
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _check_search(owner: str, objective: Any, metric: Any, mode: Any, batched: Any) -> None:
    if not callable(objective):
        raise TypeError(f"{owner}: objective must be a function; got {type(objective).__name__}.")
    if not isinstance(metric, str):
        raise TypeError(f"{owner}: metric must be the name of a metric (a str); got {metric!r}.")
    if mode not in ("max", "min"):
        raise ValueError(f"{owner}: mode must be 'max' or 'min'; got {mode!r}.")
    if not isinstance(batched, bool):
        raise TypeError(f"{owner}: batched must be True or False; got {batched!r}.")


def _run(objective: Callable, configs: list[dict], batched: bool, metric: str,
         mode: str) -> Results:
    outputs = objective(configs) if batched else [objective(c) for c in configs]
    if not isinstance(outputs, Sequence) or len(outputs) != len(configs):
        raise ValueError(
            f"the objective must return one dict of metrics per config; got "
            f"{len(outputs) if isinstance(outputs, Sequence) else type(outputs).__name__} results "
            f"for {len(configs)} configs.")
    for m in outputs:
        if not isinstance(m, dict):
            raise TypeError(f"the objective must return a dict of metrics per config; got "
                            f"{type(m).__name__} {m!r}.")
    trials = [Trial(c, {k: float(v) for k, v in m.items()}) for c, m in zip(configs, outputs)]
    return Results(trials, metric, mode)


def grid_search(objective: Callable, space: dict, *, points: int = 3, metric: str,
                mode: str = "max", batched: bool = False) -> Results:
    """Evaluates ``objective`` on every point of :func:`grid` and sorts the trials.

    Example:
        >>> results = grid_search(objective, {"learning_rate": log_uniform(1e-3, 1e-1)},
        ...                       points=5, metric="val_accuracy")
    """
    _check_search("grid_search", objective, metric, mode, batched)
    return _run(objective, grid(space, points), batched, metric, mode)


def random_search(objective: Callable, space: dict, *, key: jax.Array, trials: int, metric: str,
                  mode: str = "max", batched: bool = False) -> Results:
    """Evaluates ``objective`` on ``trials`` random configurations (log scale where asked).

    Example:
        >>> results = random_search(objective, space, key=jax.random.key(0), trials=16,
        ...                         metric="val_accuracy", batched=True)
        >>> print(results.table(5))
    """
    _check_search("random_search", objective, metric, mode, batched)
    _check_key("random_search", key)
    trials = _check_int("random_search", "trials", trials, 1)
    return _run(objective, sample(space, key, trials), batched, metric, mode)


def refine(space: dict, results: Results, *, top: int = 3, margin: float = 0.5) -> dict:
    """Coarse-to-fine: a narrower space spanning the ``top`` best trials.

    Each numeric dimension becomes the range of the top trials' values widened
    by ``margin`` × that range on each side (on a log scale for log_uniform),
    clipped to the old range; a choice keeps the options the top trials used.

    Example:
        >>> fine = refine(space, coarse_results, top=3)
        >>> results = random_search(objective, fine, key=key2, trials=16, metric="val_accuracy")
    """
    _check_space("refine", space)
    top = _check_int("refine", "top", top, 1)
    margin = _check_number("refine", "margin", margin)
    if not 0 <= margin < math.inf:
        raise ValueError(f"refine: margin must be a finite number >= 0; got {margin!r}.")
    if not isinstance(results, Sequence) or not all(isinstance(t, Trial) for t in results):
        raise TypeError("refine: results must be the Results of grid_search or random_search.")
    best = list(results)[:top]
    if not best:
        raise ValueError("refine: results hold no trials.")
    for name in space:
        if any(name not in t.config for t in best):
            raise KeyError(f"refine: the trials' configs have no value for space[{name!r}]; "
                           f"they name {sorted(best[0].config)}.")
    return {name: dim.around([t.config[name] for t in best], margin) for name, dim in space.items()}


# ------------------------------------------------------------------ many models at once


def parallel_fit(loss_fn: Callable, tx: opt.Optimizer, state: _train.TrainState,
                 configs: list[dict], train_data: Any, *, key: jax.Array, epochs: int,
                 batch_size: int, val_data: Any = None, eval_fn: Callable | None = None,
                 mesh: Any = None, batch_axis: str = "data", return_states: bool = False,
                 ) -> list[dict] | tuple[list[dict], _train.TrainState]:
    """Trains one model per configuration, all in one compiled program (``jax.vmap``).

    Every configuration starts from ``state`` and differs only in the optimizer
    hyperparameters it names (set with :func:`optimizers.set_hyperparams`, kept
    as data), so the epoch program is compiled once for all of them. For a
    hyperparameter that follows a schedule the value is the schedule's peak:
    ``{"learning_rate": 3e-4}`` on warmup + cosine trains with the same schedule
    scaled to peak at 3e-4 (:mod:`optimizers.schedules`). Every
    value of every configuration is range-checked first (a negative learning
    rate is an error, not gradient ascent). The epochs run through the loop
    :func:`fnn.train.fit` runs (``run_epochs``, epochs numbered from
    ``state.step``) and the data get fit's checks; data order and dropout keys
    are the same for every model, so each result equals that of training the
    configuration alone with ``fit`` and the same key. A configuration that
    diverges reports a NaN loss (it sorts last in :class:`Results`); it does
    not stop the others.

    Given a ``mesh``, the configurations are spread over the devices of its
    ``batch_axis``: the vmapped configuration axis of every state leaf is split
    over it (each device trains its share of the models, with no communication
    between them; the data are replicated). The list is padded with copies of
    the first configuration to a multiple of the number of devices, and their
    results dropped. The results equal those without a mesh up to float rounding.

    Returns:
      One dict of final metrics per configuration: ``train_<metric>`` of the
      last epoch and, with ``val_data`` and ``eval_fn``, ``val_<metric>``. With
      ``return_states=True``, ``(metrics, states)``: ``states`` is the trained
      :class:`~fnn.train.TrainState` of every configuration stacked on a leading
      axis (``jax.tree.map(lambda x: x[i], states)`` is configuration i's, ready
      to evaluate, save or train on; on a mesh, still spread over it).

    Example:
        >>> configs = sample({"learning_rate": log_uniform(1e-4, 1e-1)}, key, 16)
        >>> metrics = parallel_fit(loss_fn, tx, state, configs, (x, y), key=key, epochs=10,
        ...                        batch_size=64, val_data=(xv, yv), eval_fn=eval_fn)
        >>> metrics, states = parallel_fit(..., return_states=True)
        >>> best = jax.tree.map(lambda x: x[0], states)   # configs[0]'s trained state
    """
    if not isinstance(return_states, bool):
        raise TypeError(f"parallel_fit: return_states must be True or False; got "
                        f"{return_states!r}.")
    opt._base.check_optimizer("parallel_fit", "tx", tx)
    _check_key("parallel_fit", key)
    epochs = _check_int("parallel_fit", "epochs", epochs, 1)
    steps_per_epoch = _train.check_fit_inputs("parallel_fit", loss_fn, state, train_data,
                                              batch_size, False, val_data, eval_fn)
    if isinstance(configs, dict) or not isinstance(configs, Sequence) \
            or not all(isinstance(c, dict) for c in configs):
        raise TypeError("parallel_fit: configs must be a list of dicts of hyperparameters, e.g. "
                        "tuning.sample(space, key, 16).")
    if not configs:
        raise ValueError("parallel_fit: configs is empty.")
    names = list(configs[0])
    if any(list(c) != names for c in configs):
        raise ValueError("parallel_fit: every config must name the same hyperparameters.")
    for i, config in enumerate(configs):  # every value, not only the first configuration's
        for name, value in config.items():
            _validate.check(f"parallel_fit: configs[{i}]", name, value, allow_schedule=False)
    available = opt.hyperparams(state.opt_state)
    try:
        dtypes = {name: available[name].dtype for name in names}
    except KeyError as error:
        raise ValueError(f"parallel_fit: configs must name hyperparameters of tx that one link "
                         f"owns; {error.args[0]}") from None
    stacked = {name: jnp.asarray([c[name] for c in configs], dtypes[name]) for name in names}
    opt.set_hyperparams(state.opt_state, **{n: v[0] for n, v in stacked.items()})  # validates names
    n = len(configs)

    def configured(hp):
        return state._replace(opt_state=opt.set_hyperparams(state.opt_state, **hp))

    vmapped = jax.vmap(_train.make_epoch(loss_fn, tx, batch_size), in_axes=(0, None, None))
    train_data = jax.tree_util.tree_map(jnp.asarray, train_data)
    if mesh is None:
        states = jax.vmap(configured)(stacked)  # new buffers: donating them leaves `state` intact
        epoch = jax.jit(vmapped, donate_argnums=(0,))
    else:
        mesh = _sharding.auto_mesh("parallel_fit", mesh, batch_axis)
        padding = -n % mesh.shape[batch_axis]  # copies of the first configuration, dropped
        stacked = {k: jnp.concatenate([v, jnp.repeat(v[:1], padding)]) for k, v in stacked.items()}
        per_config, replicated = (_sharding.batch_sharding(mesh, batch_axis),
                                  _sharding.replicated(mesh))
        with jax.set_mesh(mesh):
            states = jax.jit(jax.vmap(configured), out_shardings=per_config)(stacked)
        train_data = _sharding.place(train_data,
                                     jax.tree_util.tree_map(lambda _: replicated, train_data))
        jitted = jax.jit(vmapped, donate_argnums=(0,), in_shardings=(per_config, replicated,
                         replicated), out_shardings=(per_config, per_config))

        def epoch(states, data, key):
            with jax.set_mesh(mesh):
                return jitted(states, data, key)
    last: dict = {}
    states = _train.run_epochs(epoch, states, train_data,
                               key, _train.first_epoch(state, steps_per_epoch), epochs,
                               lambda e, states, metrics: last.update(metrics=metrics))
    metrics = last["metrics"]
    results = [{f"train_{k}": float(v[i]) for k, v in metrics.items()} for i in range(n)]
    if eval_fn is not None:
        params = jax.vmap(lambda s: s.unpacked_params())(states)
        val = jax.jit(jax.vmap(eval_fn, in_axes=(0, 0, None)))(params, states.model_state, val_data)
        for i in range(n):
            results[i].update({f"val_{k}": float(v[i]) for k, v in val.items()})
    if not return_states:
        return results
    if jax.tree_util.tree_leaves(states)[0].shape[0] != n:  # the mesh's padding, dropped
        states = jax.tree_util.tree_map(lambda x: x[:n], states)
    return results, states
