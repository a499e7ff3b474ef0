"""Reading and changing the hyperparameters kept in optimizer states.

Every optimizer state built by :func:`optimizers.from_rule` holds its numeric
hyperparameters as scalar arrays in ``state.hyperparams`` (settable) and, for
those that follow a schedule, the value used by the last step in
``state.scheduled`` (read-only: the schedule recomputes it every step). A
schedule's *peak* is settable data too (kept in ``state.hyperparams``; see
:mod:`optimizers.schedules`): :func:`set_hyperparams` with the name of a
scheduled hyperparameter multiplies the schedule so that its peak becomes the
given value, and :func:`hyperparams` still reads the value the last step used
(``settable=True`` reads the peaks). Chains,
wrappers and :func:`optimizers.partition` hold such states inside them; these
functions find them. A *link* names one of them: an int is a chain's (or a
switch's) link, a str is a partition's group, and a tuple is a path through
nested ones (``(1, "head")``: group ``"head"`` of a partition that is link 1 of
a chain).

Which value a step uses when the optimizer passed to ``update`` and the state
disagree (:func:`used_values`): **the optimizer's own value, unless the state's
value was chosen with** :func:`set_hyperparams` (recorded per name in
``state.overridden``, a bool array, so it works under ``jit`` and ``vmap``).
Re-running a notebook cell with ``adam(0.5)`` on a state made by
``adam(1e-3)``, or restoring an old checkpoint into a new optimizer, steps at
0.5; a state whose rates were set per model with ``set_hyperparams`` (a vmapped
batch for a hyperparameter search) keeps its rates. The value used is written
back, so :func:`hyperparams` reports it. A state from a different optimizer
(other hyperparameter names, or a schedule on one side and a number on the
other) is an error naming both.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from . import _scheduled, _validate

Link = int | str | tuple[int | str, ...] | None


def _describe(fixed: Any, scheduled: Any) -> str:
    text = ", ".join(sorted(fixed)) or "none"
    return text + (f" (scheduled: {', '.join(sorted(scheduled))})" if scheduled else "")


def check_state_matches(owner: str, state: Any, fixed: dict, schedules: dict) -> None:
    """Raises ValueError unless ``state`` holds the hyperparameters of the optimizer stepping it
    (the same names, each fixed or scheduled on both sides). Static: works under jit."""
    state_scheduled = set(state.scheduled)  # names whose peak is kept are in both dicts
    state_fixed = set(state.hyperparams) - state_scheduled
    if state_fixed == set(fixed) and state_scheduled == set(schedules):
        return
    fix = ("Step the state with the optimizer whose init made it, or make a new state with "
           "this optimizer's init (state = tx.init(params)).")
    if state_fixed | state_scheduled == set(fixed) | set(schedules):
        name = sorted(state_fixed ^ set(fixed))[0]
        if name in schedules:
            what = "follows a schedule in this optimizer but is a fixed number in the state"
        else:
            what = "is a fixed number in this optimizer but follows a schedule in the state"
        raise ValueError(f"{owner}.update: {name} {what}, which was made by an optimizer built "
                         f"differently. {fix}")
    raise ValueError(
        f"{owner}.update: the state was made by a different optimizer: it holds the "
        f"hyperparameters {_describe(state_fixed, state_scheduled)}, but {owner}(...) has "
        f"{_describe(fixed, schedules)}. {fix}"
    )


def used_values(stored: dict, overridden: dict, own: dict, last_scheduled: dict,
                scheduled: dict) -> tuple[dict, dict, dict]:
    """The hyperparameters a step uses, and what the state stores afterwards.

    A fixed value is the optimizer's own (``own``, the constructor's argument)
    unless ``overridden`` says the state's value was chosen with
    :func:`set_hyperparams`; a scheduled value is the schedule's, rescaled to the
    peak chosen the same way when ``own`` has one (:func:`optimizers._scheduled.scale`).
    A value out of
    its range (possible only when it was not concrete where it was given: traced,
    or a schedule's value) is replaced by NaN in the values used, so that the
    step is visibly NaN and not an ascent.

    Returns:
      (values for the rule, fixed values to store, scheduled values to store).
    """
    return _used_values(stored, overridden, own, last_scheduled, scheduled)


@jax.jit
def _used_values(stored, overridden, own, last_scheduled, scheduled):
    fixed = {k: jnp.where(overridden[k], v, jnp.asarray(own[k]).astype(v.dtype))
             for k, v in stored.items()}  # fixed values and the peaks of schedules
    scheduled = {k: jnp.asarray(v).astype(last_scheduled[k].dtype) for k, v in scheduled.items()}
    scheduled = {k: _scheduled.scale(v, fixed[k], jnp.asarray(own[k]).astype(v.dtype))
                 if k in fixed else v for k, v in scheduled.items()}
    values = {k: _validate.nan_outside_range(k, v) for k, v in {**fixed, **scheduled}.items()}
    return values, fixed, scheduled


def _is_owner(state: Any) -> bool:
    """Whether ``state`` holds hyperparameters itself (a state made by ``from_rule``)."""
    fields = getattr(state, "_fields", ())
    return "hyperparams" in fields and "scheduled" in fields


def _wrapped_field(state: Any) -> str | None:
    """The field holding the wrapped state: ``inner`` (wrappers) or ``states`` (a switch,
    whose optimizers are links like a chain's); None for anything else."""
    fields = getattr(state, "_fields", ())
    if _is_owner(state):
        return None
    return "inner" if "inner" in fields else "states" if "states" in fields else None


def _groups(state: Any) -> dict | None:
    """The groups of a partition's state (``PartitionState.groups``, label -> state), else None."""
    fields = getattr(state, "_fields", ())
    if "groups" in fields and isinstance(state.groups, dict) and not _is_owner(state):
        return state.groups
    return None


def _owners(state: Any, path: tuple = ()):
    """Yields (link path, state) for every hyperparameter-holding state inside ``state``."""
    field = _wrapped_field(state)
    groups = _groups(state)
    if _is_owner(state):
        yield path, state
    elif field is not None:
        yield from _owners(getattr(state, field), path)
    elif groups is not None:  # a partition: each group is a link named by its label
        for label, group in groups.items():
            yield from _owners(group, path + (label,))
    elif type(state) is tuple:  # a chain's state
        for i, link in enumerate(state):
            yield from _owners(link, path + (i,))


def _describe_node(node: Any) -> str:
    if type(node) is tuple:
        return f"a chain of {len(node)} links"
    if _groups(node) is not None:
        return f"a partition with groups {sorted(_groups(node))}"
    return "no chain or partition"


def _select_link(state: Any, link: Link) -> tuple[Any, tuple]:
    if link is None:
        return state, ()
    path = (link,) if isinstance(link, (int, str)) else tuple(link)
    current = state
    for depth, i in enumerate(path):
        current = _unwrap(current)
        groups = _groups(current)
        if isinstance(i, str) and groups is not None and i in groups:
            current = groups[i]
            continue
        if (isinstance(i, int) and not isinstance(i, bool) and type(current) is tuple
                and 0 <= i < len(current)):
            current = current[i]
            continue
        hint = ""
        if isinstance(i, str):
            where = [p for p in _group_paths(state) if p[-1] == i]
            if where:
                hint = f" The group {i!r} is at link={where[0]!r}."
        raise ValueError(
            f"link={link!r} does not name a link of this state: at depth {depth} there is "
            f"{_describe_node(current)}, and {i!r} is not one of its "
            f"{'links' if type(current) is tuple else 'groups'}.{hint}"
        )
    return current, path


def _group_paths(state: Any, path: tuple = ()) -> list[tuple]:
    """The link paths of every partition group inside ``state`` (for error messages)."""
    state = _unwrap(state)
    groups = _groups(state)
    if groups is not None:
        out = []
        for label, group in groups.items():
            out += [path + (label,)] + _group_paths(group, path + (label,))
        return out
    if type(state) is tuple:
        return [p for i, link in enumerate(state) for p in _group_paths(link, path + (i,))]
    return []


def _unwrap(state: Any) -> Any:
    """The chain-like tuple or partition inside wrappers (``inner``) and switches (``states``)."""
    while (field := _wrapped_field(state)) is not None:
        state = getattr(state, field)
    return state


class Hyperparams(dict):
    """A dict of hyperparameter values; a name owned by several chain links raises on access."""

    def __init__(self, values: dict, ambiguous: dict):
        super().__init__(values)
        self._ambiguous = ambiguous

    def __missing__(self, name: str):
        if name in self._ambiguous:
            raise KeyError(
                f"{name!r} is a hyperparameter of several links of this chain or groups of this "
                f"partition "
                f"({', '.join(map(str, self._ambiguous[name]))}); pass link=… to "
                "optimizers.hyperparams to say which."
            )
        raise KeyError(f"no hyperparameter {name!r}; this state has {sorted(self)}.")


def hyperparams(state: Any, link: Link = None, *, settable: bool = False) -> Hyperparams:
    """Returns the hyperparameters in ``state`` as a dict of scalar arrays.

    Scheduled hyperparameters give the value used by the last step (before the
    first step, the value the first step will use). With ``settable=True``, the
    values :func:`set_hyperparams` sets: the fixed values and, for a scheduled
    hyperparameter, its schedule's peak (a schedule whose peak cannot be set,
    such as a plain function, is left out).

    Args:
      state: an optimizer state (also a chain's or a wrapper's).
      link: which part of a chain or partition to read: a chain's link index, a
        partition's group label, or a path of them for nested ones (``(1,
        "head")``); None reads all links, and a name owned by two links must
        then be read with ``link=``.
      settable: read the settable values (peaks of schedules) instead of the used ones.

    Example:
        >>> optimizers.hyperparams(state)["learning_rate"]
        >>> optimizers.hyperparams(state, "head")["learning_rate"]   # a partition's group
        >>> optimizers.hyperparams(state, settable=True)["learning_rate"]  # a schedule's peak
    """
    if not isinstance(settable, bool):
        raise TypeError(f"hyperparams: settable must be True or False; got {settable!r}.")
    state, base = _select_link(state, link)
    values, owners = {}, {}
    for path, owner in _owners(state, base):
        read = owner.hyperparams if settable else {**owner.hyperparams, **owner.scheduled}
        for name, value in read.items():
            values[name] = value
            owners.setdefault(name, []).append(path)
    ambiguous = {name: paths for name, paths in owners.items() if len(paths) > 1}
    return Hyperparams({k: v for k, v in values.items() if k not in ambiguous}, ambiguous)


def set_hyperparams(state: Any, link: Link = None, **values: Any) -> Any:
    """Returns ``state`` with hyperparameters replaced; the compiled step is reused.

    For a scheduled hyperparameter the value set is the schedule's peak
    (:func:`optimizers.schedules.peak`): every later step uses schedule(t) ·
    value / peak, the whole schedule scaled so that its peak is ``value``
    (``hyperparams`` still reads the value the last step used, or, before the
    first step, the value the first step will use). A plain function
    ``step -> value`` has no known peak and cannot be set (a clear error).

    A value set here wins over the value of the optimizer that later steps the
    state (``adam(1e-3).update`` on a state set to ``learning_rate=0.1`` steps at
    0.1); values not set here are the stepping optimizer's own (see the module
    docstring). The new values keep the stored dtype (float32 at least, float64
    for float64 params). Concrete values (also a batch of them, one per vmapped
    state) are range-checked like the constructor's arguments; traced values
    (inside ``jit``/``vmap``) are accepted, and one out of range makes the step
    NaN.

    Args:
      state: an optimizer state (also a chain's or a wrapper's).
      link: which link of a chain or group of a partition to set (an int, a label,
        or a path of them; see :func:`hyperparams`).
      **values: new values by name, e.g. ``learning_rate=1e-4``.

    Example:
        >>> state = optimizers.set_hyperparams(state, learning_rate=1e-4)
        >>> state = optimizers.set_hyperparams(state, "head", learning_rate=1e-2)  # one group
        >>> # many models in one program: one state per learning rate
        >>> states = jax.vmap(lambda lr: optimizers.set_hyperparams(tx.init(params),
        ...                                                           learning_rate=lr))(lrs)
    """
    target, base = _select_link(state, link)
    owners = list(_owners(target, base))
    if not owners:
        raise TypeError(
            f"set_hyperparams: {type(target).__name__} holds no hyperparameters; pass the state "
            "returned by an optimizer's init."
        )
    replacements: dict[tuple, dict] = {}
    for name, value in values.items():
        holders = [path for path, owner in owners if name in owner.hyperparams]
        if not holders:
            if any(name in owner.scheduled for _, owner in owners):
                raise ValueError(_scheduled.not_settable(name))
            known = sorted({k for _, o in owners for k in o.hyperparams})
            raise ValueError(
                f"set_hyperparams: this state has no settable hyperparameter {name!r}; it has "
                f"{', '.join(known)}. (Options fixed at construction, such as nesterov or a zero "
                "rmsprop momentum, are not data.)"
            )
        if name in _validate.INIT_ONLY:
            moment = _validate.INIT_ONLY[name]
            raise ValueError(
                f"set_hyperparams: {name} is used only by init (it fills {moment}), so setting "
                f"it in a state would change nothing. Build the optimizer with it, or set the "
                f"moment itself: state._replace({moment}=jax.tree.map(lambda h: jnp.full_like("
                f"h, value), state.{moment}))."
            )
        if len(holders) > 1:
            raise ValueError(
                f"set_hyperparams: {name} is a hyperparameter of several links "
                f"({', '.join(map(str, holders))}); pass link=… to say which."
            )
        if _validate.is_schedule(value) or jnp.ndim(value) == 0:
            _validate.check("set_hyperparams", name, value, allow_schedule=False)
        else:  # a batch of values, one per vmapped state; its shape is checked below
            _validate.check_batch("set_hyperparams", name, value)
        replacements.setdefault(holders[0], {})[name] = value

    def rebuild(node: Any, path: tuple) -> Any:
        field = _wrapped_field(node)
        if _is_owner(node):
            if path not in replacements:
                return node
            new, overridden = dict(node.hyperparams), dict(node.overridden)
            scheduled = dict(node.scheduled)
            for name, value in replacements[path].items():
                old = node.hyperparams[name]
                value = jnp.asarray(value, old.dtype)
                new[name] = jnp.broadcast_to(value, old.shape) if value.ndim == 0 else value
                if new[name].shape != old.shape:
                    raise ValueError(
                        f"set_hyperparams: {name} has shape {old.shape} in this state (one "
                        f"value per model of a vmapped batch, or a scalar); got a value of "
                        f"shape {value.shape}."
                    )
                # the user's choice: it now wins over the optimizer's own value in update
                overridden[name] = jnp.ones(old.shape, bool)
                if name in scheduled:  # a schedule's peak
                    scheduled[name] = _scheduled.rescale_first(
                        scheduled[name], getattr(node, "count", None), new[name], old)
            return node._replace(hyperparams=new, overridden=overridden, scheduled=scheduled)
        if field is not None:
            return node._replace(**{field: rebuild(getattr(node, field), path)})
        if _groups(node) is not None:
            return node._replace(groups={label: rebuild(group, path + (label,))
                                         for label, group in node.groups.items()})
        if type(node) is tuple:
            return tuple(rebuild(child, path + (i,)) for i, child in enumerate(node))
        return node

    if link is None:
        return rebuild(state, ())
    return _replace_at(state, base, rebuild(target, base))


def _replace_at(state: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    field = _wrapped_field(state)
    if field is not None:
        return state._replace(**{field: _replace_at(getattr(state, field), path, new)})
    if _groups(state) is not None:
        label = path[0]
        return state._replace(groups={**state.groups,
                                      label: _replace_at(state.groups[label], path[1:], new)})
    i = path[0]
    return state[:i] + (_replace_at(state[i], path[1:], new),) + state[i + 1:]
