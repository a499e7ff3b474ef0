"""Combinators: serial, parallel and residual compositions of layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .base import Layer, ParamsError, named


def _children(owner: str, layers: tuple) -> list[tuple[str, Layer]]:
    if not layers:
        raise ValueError(f"{owner}: needs at least one layer.")
    out = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = " (layer constructors are always called, e.g. fnn.Relu())" if callable(layer) \
                else ""
            raise TypeError(f"{owner}: argument {i} is not a layer{hint}; got {layer!r}.")
        out.append((f"{i}_{layer.name}", layer))
    return out


def _child_key(key, i):
    return None if key is None else jax.random.fold_in(key, i)


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
            raise ParamsError("", f"{owner} expects {what} with keys {names}; got {found} "
                                  f"(missing {missing}, unexpected {extra}); {hint}.", what)


def _apply_child(name, layer, params, state, x, key, train):
    try:
        return layer.apply(params[name], state[name], x, key=key, train=train)
    except ParamsError as error:
        raise error.within(name) from None


def serial(*layers: Layer) -> Layer:
    """Layers one after another: y = f_n(… f_2(f_1(x))).

    Children's params and state are nested under ``"<index>_<name>"``; child i
    gets the key ``fold_in(key, i)``.

    Args:
      *layers: the layers, applied in order.

    Example:
        >>> model = fnn.serial(fnn.Dense(256), fnn.Relu(), fnn.Dense(10))
        >>> out_shape, params, state = model.init(jax.random.key(0), (-1, 64))
    """
    children = _children("serial", layers)

    def init(key, input_shape, dtype=None):
        params, state, shape = {}, {}, input_shape
        for i, (name, layer) in enumerate(children):
            args = (jax.random.fold_in(key, i), shape) + (() if dtype is None else (dtype,))
            shape, params[name], state[name] = layer.init(*args)
        return shape, params, state

    def apply(params, state, x, *, key=None, train=False):
        _expect_children("serial", children, params, state)
        new_state = {}
        for i, (name, layer) in enumerate(children):
            x, new_state[name] = _apply_child(name, layer, params, state, x, _child_key(key, i),
                                              train)
        return x, new_state

    return named(init, apply, "serial")


def parallel(*layers: Layer) -> Layer:
    """Layers side by side on a tuple of inputs: (x_1, …, x_n) → (f_1(x_1), …, f_n(x_n)).

    Args:
      *layers: one layer per input; ``init`` takes a tuple of input shapes.

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
        for i, ((name, layer), shape) in enumerate(zip(children, input_shape)):
            args = (jax.random.fold_in(key, i), shape) + (() if dtype is None else (dtype,))
            out, params[name], state[name] = layer.init(*args)
            shapes.append(out)
        return tuple(shapes), params, state

    def apply(params, state, xs, *, key=None, train=False):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(children):
            got = len(xs) if isinstance(xs, (tuple, list)) else type(xs).__name__
            raise ValueError(f"parallel: expected a tuple of {len(children)} inputs; got {got}.")
        _expect_children("parallel", children, params, state)
        outs, new_state = [], {}
        for i, ((name, layer), x) in enumerate(zip(children, xs)):
            y, new_state[name] = _apply_child(name, layer, params, state, x, _child_key(key, i),
                                              train)
            outs.append(y)
        return tuple(outs), new_state

    return named(init, apply, "parallel")


def residual(*layers: Layer) -> Layer:
    """A residual block: y = x + f(x), with f = serial(*layers) (He et al. 2016).

    Args:
      *layers: the body f = serial(*layers); it must keep the shape of its input.

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
