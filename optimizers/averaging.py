"""Parameter averaging: an exponential moving average (Polyak averaging) of the params.

:func:`ema` is the last link of a chain: it passes the updates through and
averages the params they lead to, so evaluating :func:`averaged_params` instead
of the params often generalizes better late in training::

    tx = optimizers.chain(optimizers.adam(1e-3), optimizers.ema(0.999))
    ...
    eval_params = optimizers.averaged_params(state)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._base import Optimizer, apply_updates, check_same_structure
from ._rule import from_rule
from .hyperparams import _groups, _wrapped_field


class EmaState(NamedTuple):
    count: jax.Array
    average: Any  # the (debiased) average of the params after each step
    hyperparams: dict
    scheduled: dict
    overridden: dict  # name -> bool: set with set_hyperparams (then it wins in update)


def ema(decay: Any = 0.999, debias: bool = True, moment_dtype: Any = None) -> Optimizer:
    """Keeps an exponential moving average of the params; passes the updates through.

    Put it last in a chain: it sees the params p and the chain's final updates u,
    so the params after the step are p + u (as ``apply_updates`` computes them, in
    the param dtype), and after step t

      debias=True:  a_t = Σₖ (1 − d) dᵗ⁻ᵏ (p + u)ₖ / (1 − dᵗ)  (an average of the
                    params after steps 1…t: weights summing to 1);
      debias=False: a_t = d a_{t−1} + (1 − d) (p + u)_t, with a₀ the initial params.

    Both are kept as a_t = a_{t−1} + w_t ((p + u)_t − a_{t−1}), with w_t = (1 − d) /
    (1 − dᵗ) (debiased) or 1 − d; the state holds a_t itself, so
    :func:`averaged_params` is a read and the initial params are the average
    before the first step. ``decay`` is a hyperparameter kept as data (a
    schedule uses its current value in wₜ, as optax's debiasing does).

    Not ``optax.ema``, which averages the *updates* (a momentum); this averages
    the params and leaves the updates unchanged. Inside ``skip_nonfinite`` or
    ``accumulate`` (wrapping the whole chain) skipped and accumulating calls do
    not count as steps.

    Args:
      decay: d in [0, 1), a number or a schedule (0.999 averages over ~1000 steps).
      debias: divide by 1 − dᵗ, so early averages are not pulled to the initial params.
      moment_dtype: dtype of the average (default: the param dtype, at least float32).

    Example:
        >>> tx = optimizers.chain(optimizers.adam(1e-3), optimizers.ema(0.999))
        >>> eval_params = optimizers.averaged_params(state, params)
    """
    if not isinstance(debias, bool):
        raise TypeError(f"ema: debias must be a bool (True or False); got {debias!r}.")

    def rule(count, decay):
        keep = 1 - decay
        weight = keep / (1 - decay ** count.astype(decay.dtype)) if debias else keep

        def leaf(u, new_p, average):  # new_p: apply_updates(params, u), in the param dtype
            return u, (average + weight * (new_p - average),)
        return leaf

    base = from_rule("ema", rule, EmaState, {"decay": decay}, moments=("average",),
                     moment_dtype=moment_dtype, needs_params=True)

    def init(params: Any) -> EmaState:
        state = base.init(params)
        average = jax.tree_util.tree_map(lambda p, a: jnp.asarray(p).astype(a.dtype), params,
                                         state.average)
        return state._replace(average=average)

    def update(updates: Any, state: EmaState, params: Any = None, **extra) -> tuple:
        if params is None:
            raise ValueError("ema.update needs the params: call update(grads, state, params).")
        # the params after this step, exactly as apply_updates makes them (rounded to the param
        # dtype; a one-pass kernel's own result), so the average is of params that existed
        return base.update(updates, state, apply_updates(params, updates), **extra)

    return Optimizer(init, update)


def _ema_states(state: Any, path: tuple = ()):
    """Yields (link path, EmaState) for every ema inside chains, wrappers and partitions."""
    if isinstance(state, EmaState):
        yield path, state
        return
    field = _wrapped_field(state)
    groups = _groups(state)
    if field is not None:
        yield from _ema_states(getattr(state, field), path)
    elif groups is not None:
        for label, group in groups.items():
            yield from _ema_states(group, path + (label,))
    elif type(state) is tuple:
        for i, link in enumerate(state):
            yield from _ema_states(link, path + (i,))


def averaged_params(state: Any, params: Any = None) -> Any:
    """The average kept by the :func:`ema` link inside ``state``: the params to evaluate.

    Returns a_t (already debiased if ``debias=True``; the initial params before
    the first step), in the average's dtype (float32 at least), or in the dtypes of
    ``params`` when they are given (their structure must match).

    Args:
      state: an optimizer state holding exactly one ``ema`` (e.g. a chain's).
      params: optional params whose dtypes the result takes.

    Example:
        >>> tx = optimizers.chain(optimizers.sgd(0.1), optimizers.ema(0.99))
        >>> state = tx.init(params)                       # ... train ...
        >>> eval_params = optimizers.averaged_params(state, params)
    """
    found = list(_ema_states(state))
    if not found:
        raise ValueError(
            f"averaged_params: this {type(state).__name__} holds no ema state; build the "
            "optimizer with an ema link last, e.g. optimizers.chain(optimizers.adam(1e-3), "
            "optimizers.ema(0.999)), and pass the state its init and update returned."
        )
    if len(found) > 1:
        raise ValueError(
            f"averaged_params: this state holds {len(found)} ema states (at links "
            f"{', '.join(repr(p) for p, _ in found)}); use one ema, last in the chain."
        )
    average = found[0][1].average
    if params is None:
        return average
    check_same_structure("averaged_params", "the average", average, "params", params)
    return jax.tree_util.tree_map(lambda a, p: a.astype(jnp.result_type(p)), average, params)
