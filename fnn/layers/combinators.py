"""Combinators: serial, parallel and residual compositions of layers.

Children are named ``"<layer name>_<k>"``, k counting the earlier children with
the same layer name in this combinator (``dense_0``, ``relu_0``, ``dense_1``),
or by the user: ``serial(("encoder", Dense(64)), Relu(), ("head", Dense(10)))``.
Each child's init and apply keys derive from its name, not its position
(:func:`init.leaf_key`). Inserting or removing a layer renames only the later
children with the same layer name, so a Dropout or Relu added to a model
changes no Dense's (or any other layer's) name, initial values or dropout mask.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from init import leaf_key

from .base import Layer, ParamsError, named

Child = Layer | tuple[str, Layer]  # a layer, or a (name, layer) pair
_OLD_STYLE = re.compile(r"^(\d+)_(\w+)$")  # "<index>_<name>": fnn's names before "dense_0"


def _children(owner: str, layers: tuple) -> list[tuple[str, Layer]]:
    """(name, layer) per argument: a user name, or ``"<layer.name>_<k>"``; errors name the
    argument."""
    if not layers:
        raise ValueError(f"{owner}: needs at least one layer.")
    out, counts, given = [], {}, {}
    for i, arg in enumerate(layers):
        name = None
        if not isinstance(arg, Layer) and isinstance(arg, tuple) and len(arg) == 2 \
                and isinstance(arg[1], Layer):
            name, arg = arg
            if not isinstance(name, str) or not name:
                raise TypeError(f"{owner}: argument {i} names its layer with {name!r}; a name "
                                "must be a non-empty str, e.g. (\"encoder\", fnn.Dense(64)).")
            if name in given:
                raise ValueError(f"{owner}: the name {name!r} is given to arguments {given[name]} "
                                 f"and {i}; names must be unique within one {owner}.")
            given[name] = i
        elif not isinstance(arg, Layer):
            hint = " (layer constructors are always called, e.g. fnn.Relu())" if callable(arg) \
                else " (a layer, or a (name, layer) pair)"
            raise TypeError(f"{owner}: argument {i} is not a layer{hint}; got {arg!r}.")
        k = counts.get(arg.name, 0)
        counts[arg.name] = k + 1
        out.append((name or f"{arg.name}_{k}", arg, name is not None))
    auto = {name: i for i, (name, _, user) in enumerate(out) if not user}
    for name, i in given.items():
        if name in auto:
            raise ValueError(f"{owner}: argument {i}'s name {name!r} is also the automatic name "
                             f"of argument {auto[name]} (unnamed layers are named "
                             "'<layer>_<k>'); pick another name.")
    return [(name, layer) for name, layer, _ in out]


def _child_key(key, name):
    """The child's key: ``init.leaf_key(key, (DictKey(name),))``, from its name alone."""
    return None if key is None else leaf_key(key, (jax.tree_util.DictKey(name),))


def _old_names_hint(children: list, found: list) -> str:
    """A hint when the keys look like the positional names fnn used before (``0_dense``)."""
    old = {f"{i}_{layer.name}": name for i, (name, layer) in enumerate(children)}
    renamed = [(k, old[k]) for k in found if k in old and k != old[k]]
    if not renamed or not all(_OLD_STYLE.match(k) for k in found):
        return ""
    k, new = renamed[0]
    return (f" These are fnn's old positional names: children are now named '<layer>_<k>' "
            f"('{k}' is now '{new}'); re-run init or rename the keys.")


def _expect_children(owner: str, children: list, params, state) -> None:
    """ParamsError unless params and state hold exactly the children's names."""
    names = [name for name, _ in children]
    for tree, what in ((params, "params"), (state, "state")):
        if not isinstance(tree, dict) or set(tree) != set(names):
            found = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
            missing = sorted(set(names) - set(tree)) if isinstance(tree, dict) else names
            extra = sorted(set(tree) - set(names)) if isinstance(tree, dict) else []
            hint = ("pass the state returned by init or by the previous apply" if what == "state"
                    else "params must come from this model's init")
            old = _old_names_hint(children, list(tree)) if isinstance(tree, dict) else ""
            raise ParamsError("", f"{owner} expects {what} with keys {names}; got {found} "
                                  f"(missing {missing}, unexpected {extra}); {hint}.{old}", what)


def _apply_child(name, layer, params, state, x, key, train):
    try:
        return layer.apply(params[name], state[name], x, key=key, train=train)
    except ParamsError as error:
        raise error.within(name) from None


def serial(*layers: Child) -> Layer:
    """Layers one after another: y = f_n(… f_2(f_1(x))).

    Children's params and state are nested under their names: ``"<layer>_<k>"``
    with k counting the earlier children of the same layer name (``dense_0``,
    ``relu_0``, ``dense_1``), or the name given in a ``(name, layer)`` pair.
    A child's keys (init, and apply's e.g. for Dropout) are
    ``init.leaf_key(key, (DictKey(name),))``: they depend on its name only, so
    inserting a layer renames and re-draws only later layers of its own kind (a
    Dropout or Relu added changes no Dense's name or values).

    Args:
      *layers: the layers, applied in order; each a layer or a ``(name, layer)``
        pair (a non-empty str, unique here and unlike the automatic names).

    Example:
        >>> model = fnn.serial(fnn.Dense(256), fnn.Relu(), ("head", fnn.Dense(10)))
        >>> out_shape, params, state = model.init(jax.random.key(0), (-1, 64))
        >>> list(params)   # ['dense_0', 'relu_0', 'head']
    """
    children = _children("serial", layers)

    def init(key, input_shape, dtype=None):
        params, state, shape = {}, {}, input_shape
        for name, layer in children:
            args = (_child_key(key, name), shape) + (() if dtype is None else (dtype,))
            shape, params[name], state[name] = layer.init(*args)
        return shape, params, state

    def apply(params, state, x, *, key=None, train=False):
        _expect_children("serial", children, params, state)
        new_state = {}
        for name, layer in children:
            x, new_state[name] = _apply_child(name, layer, params, state, x,
                                              _child_key(key, name), train)
        return x, new_state

    return named(init, apply, "serial")


def parallel(*layers: Child) -> Layer:
    """Layers side by side on a tuple of inputs: (x_1, …, x_n) → (f_1(x_1), …, f_n(x_n)).

    Children are named and keyed as in :func:`serial`.

    Args:
      *layers: one layer (or ``(name, layer)`` pair) per input; ``init`` takes a
        tuple of input shapes.

    Example:
        >>> both = fnn.parallel(fnn.Dense(8), fnn.Dense(4))
        >>> both.init(key, ((-1, 3), (-1, 5)))[0]   # ((-1, 8), (-1, 4))
    """
    children = _children("parallel", layers)

    def init(key, input_shape, dtype=None):
        if not isinstance(input_shape, (tuple, list)) or len(input_shape) != len(children) or \
                not all(isinstance(s, (tuple, list)) for s in input_shape):
            raise ValueError(f"parallel: expected a tuple of {len(children)} input shapes; got "
                             f"{input_shape!r}.")
        params, state, shapes = {}, {}, []
        for (name, layer), shape in zip(children, input_shape):
            args = (_child_key(key, name), shape) + (() if dtype is None else (dtype,))
            out, params[name], state[name] = layer.init(*args)
            shapes.append(out)
        return tuple(shapes), params, state

    def apply(params, state, xs, *, key=None, train=False):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(children):
            got = len(xs) if isinstance(xs, (tuple, list)) else type(xs).__name__
            raise ValueError(f"parallel: expected a tuple of {len(children)} inputs; got {got}.")
        _expect_children("parallel", children, params, state)
        outs, new_state = [], {}
        for (name, layer), x in zip(children, xs):
            y, new_state[name] = _apply_child(name, layer, params, state, x,
                                              _child_key(key, name), train)
            outs.append(y)
        return tuple(outs), new_state

    return named(init, apply, "parallel")


def residual(*layers: Child) -> Layer:
    """A residual block: y = x + f(x), with f = serial(*layers) (He et al. 2016).

    The block's params are the body's (named and keyed as in :func:`serial`).

    Args:
      *layers: the body f = serial(*layers) (layers or ``(name, layer)`` pairs); it
        must keep the shape of its input.

    Example:
        >>> block = fnn.residual(fnn.Dense(64), fnn.Relu(), fnn.Dense(64))
    """
    _children("residual", layers)  # errors name residual, not its inner serial
    body = serial(*layers)

    def init(key, input_shape, dtype=None):
        args = (key, input_shape) + (() if dtype is None else (dtype,))
        out, params, state = body.init(*args)
        if tuple(out) != tuple(input_shape):
            raise ValueError(f"residual: the block maps shape {tuple(input_shape)} to "
                             f"{tuple(out)}; x + f(x) needs them equal.")
        return out, params, state

    def apply(params, state, x, *, key=None, train=False):
        y, state = body.apply(params, state, x, key=key, train=train)
        if jnp.shape(y) != jnp.shape(x):  # x + f(x) would broadcast silently
            raise ValueError(f"residual: the block maps an input of shape {jnp.shape(x)} to "
                             f"{jnp.shape(y)}; x + f(x) needs them equal.")
        return x + y, state

    return named(init, apply, "residual")
