"""Reading and changing the hyperparameters kept in optimizer states.

Every optimizer state built by :func:`optimizers.from_rule` holds its numeric
hyperparameters as scalar arrays in ``state.hyperparams`` (settable) and, for
those that follow a schedule, the value used by the last step in
``state.scheduled`` (read-only: the schedule recomputes it every step). Chains
and wrappers hold such states inside them; these functions find them.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from . import _validate

Link = int | tuple[int, ...] | None


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


def _owners(state: Any, path: tuple = ()):
    """Yields (link path, state) for every hyperparameter-holding state inside ``state``."""
    field = _wrapped_field(state)
    if _is_owner(state):
        yield path, state
    elif field is not None:
        yield from _owners(getattr(state, field), path)
    elif type(state) is tuple:  # a chain's state
        for i, link in enumerate(state):
            yield from _owners(link, path + (i,))


def _select_link(state: Any, link: Link) -> tuple[Any, tuple]:
    if link is None:
        return state, ()
    path = (link,) if isinstance(link, int) else tuple(link)
    current = state
    for depth, i in enumerate(path):
        current = _unwrap(current)
        if type(current) is not tuple or not 0 <= i < len(current):
            found = f"a chain of {len(current)} links" if type(current) is tuple else "no chain"
            raise ValueError(
                f"link={link!r} does not name a link of this state: at depth {depth} "
                f"there is {found}."
            )
        current = current[i]
    return current, path


def _unwrap(state: Any) -> Any:
    """The chain-like tuple inside wrappers (``inner``) and switches (``states``)."""
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
                f"{name!r} is a hyperparameter of several links of this chain "
                f"({', '.join(map(str, self._ambiguous[name]))}); pass link=… to "
                "optimizers.hyperparams to say which."
            )
        raise KeyError(f"no hyperparameter {name!r}; this state has {sorted(self)}.")


def hyperparams(state: Any, link: Link = None) -> Hyperparams:
    """Returns the hyperparameters in ``state`` as a dict of scalar arrays.

    Scheduled hyperparameters give the value used by the last step (before the
    first step, the value the first step will use).

    Args:
      state: an optimizer state (also a chain's or a wrapper's).
      link: for a chain, the index (or path of indices for nested chains) of the
        link to read; None reads all links, and a name owned by two links must
        then be read with ``link=``.

    Example:
        >>> optimizers.hyperparams(state)["learning_rate"]
    """
    state, base = _select_link(state, link)
    values, owners = {}, {}
    for path, owner in _owners(state, base):
        for name, value in {**owner.hyperparams, **owner.scheduled}.items():
            values[name] = value
            owners.setdefault(name, []).append(path)
    ambiguous = {name: paths for name, paths in owners.items() if len(paths) > 1}
    return Hyperparams({k: v for k, v in values.items() if k not in ambiguous}, ambiguous)


def set_hyperparams(state: Any, link: Link = None, **values: Any) -> Any:
    """Returns ``state`` with hyperparameters replaced; the compiled step is reused.

    The new values keep the stored dtype (float32 at least, float64 for float64
    params). Concrete values are range-checked like the constructor's
    arguments; traced values (inside ``jit``/``vmap``) are accepted as they are.

    Args:
      state: an optimizer state (also a chain's or a wrapper's).
      link: for a chain, which link's hyperparameters to set (see :func:`hyperparams`).
      **values: new values by name, e.g. ``learning_rate=1e-4``.

    Example:
        >>> state = optimizers.set_hyperparams(state, learning_rate=1e-4)
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
                raise ValueError(
                    f"set_hyperparams: {name} follows a schedule given to the constructor, so it "
                    "cannot be set. Build the optimizer with a number (then set it), or with "
                    "a different schedule."
                )
            known = sorted({k for _, o in owners for k in o.hyperparams})
            raise ValueError(
                f"set_hyperparams: this state has no settable hyperparameter {name!r}; it has "
                f"{', '.join(known)}. (Options fixed at construction, such as nesterov or a zero "
                "rmsprop momentum, are not data.)"
            )
        if len(holders) > 1:
            raise ValueError(
                f"set_hyperparams: {name} is a hyperparameter of several links "
                f"({', '.join(map(str, holders))}); pass link=… to say which."
            )
        if jnp.ndim(value) == 0:  # a batch of values (one per vmapped state) is checked by shape
            _validate.check("set_hyperparams", name, value, allow_schedule=False)
        replacements.setdefault(holders[0], {})[name] = value

    def rebuild(node: Any, path: tuple) -> Any:
        field = _wrapped_field(node)
        if _is_owner(node):
            if path not in replacements:
                return node
            new = dict(node.hyperparams)
            for name, value in replacements[path].items():
                old = node.hyperparams[name]
                value = jnp.asarray(value, old.dtype)
                new[name] = jnp.broadcast_to(value, old.shape) if value.ndim == 0 else value
                if new[name].shape != old.shape:
                    raise ValueError(
                        f"set_hyperparams: {name} has shape {old.shape} in this state; got a "
                        f"value of shape {value.shape}."
                    )
            return node._replace(hyperparams=new)
        if field is not None:
            return node._replace(**{field: rebuild(getattr(node, field), path)})
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
    i = path[0]
    return state[:i] + (_replace_at(state[i], path[1:], new),) + state[i + 1:]
