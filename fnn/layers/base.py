"""The layer contract, once.

A layer is a pair of pure functions::

    init(key, input_shape, dtype=jnp.float32) -> (output_shape, params, state)
    apply(params, state, x, *, key=None, train=False) -> (y, state)

Shapes include the batch axis, which may be -1 (unknown); shape errors surface at
``init``, before any tracing. Params and state are dicts with readable names
(``{"w": …, "b": …}``); stateless layers have ``{}`` state and parameter-free
layers ``{}`` params. ``train`` is a Python bool; ``key`` is needed only where a
layer is random in training (Dropout). Combinators nest their children's dicts
under ``"<index>_<name>"`` (``"0_dense"``, ``"1_batchnorm"``, …) and give each
child its own key with ``jax.random.fold_in``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Layer(NamedTuple):
    """An ``(init, apply)`` pair and a readable name; see the module docstring."""

    init: Callable[..., tuple[tuple, dict, dict]]
    apply: Callable[..., tuple[Any, dict]]
    name: str = "layer"


class ParamsError(ValueError):
    """Params or state that do not fit the model; the message names the path."""

    def __init__(self, path: str, message: str):
        super().__init__(f"params{path}: {message}" if path else message)
        self.path, self.detail = path, message

    def within(self, child: str) -> ParamsError:
        return ParamsError(f"[{child!r}]{self.path}", self.detail)


def expect_keys(layer: str, tree: Any, keys: Sequence[str], what: str = "params") -> None:
    """Raises ParamsError unless ``tree`` is a dict with exactly ``keys``."""
    if not isinstance(tree, dict) or set(tree) != set(keys):
        found = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise ParamsError("", f"{layer} expects {what} with keys {sorted(keys)}; got {found}.")


def expect_shape(layer: str, name: str, array: Any, shape: tuple) -> None:
    if tuple(jnp.shape(array)) != tuple(shape):
        raise ParamsError(f"[{name!r}]", f"{layer} expects shape {tuple(shape)}; got "
                                         f"{tuple(jnp.shape(array))}.")


def concrete(shape: Sequence[int]) -> tuple[int, ...]:
    """The shape with an unknown (-1) batch size replaced by 1, for shape inference."""
    return tuple(1 if d == -1 else d for d in shape)


def infer_shape(fn: Callable, input_shape: Sequence[int], dtype: Any) -> tuple[int, ...]:
    """The output shape of ``fn`` on inputs of ``input_shape``, keeping a -1 batch axis."""
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct(concrete(input_shape), dtype)).shape
    return (input_shape[0], *out[1:]) if input_shape and input_shape[0] == -1 else tuple(out)


def check_input_shape(layer: str, input_shape: Any, *, rank: int | None = None,
                      min_rank: int = 1, expected: str = "") -> tuple[int, ...]:
    """The input shape as a tuple, or a ValueError naming the layer and both shapes."""
    try:
        shape = tuple(int(d) for d in input_shape)
    except TypeError:
        raise TypeError(f"{layer}: input_shape must be a tuple of ints; got {input_shape!r}.") \
            from None
    bad_rank = (rank is not None and len(shape) != rank) or len(shape) < min_rank
    if bad_rank or any(d < 1 and not (i == 0 and d == -1) for i, d in enumerate(shape)):
        want = expected or (f"rank {rank}" if rank else f"rank >= {min_rank}")
        raise ValueError(f"{layer}: expected an input shape {want} (the batch axis may be -1); "
                         f"got {shape}.")
    return shape


def check_float_dtype(layer: str, dtype: Any) -> jnp.dtype:
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{layer}: dtype must be floating point (float32, float64, bfloat16, "
                        f"float16); got {dtype.name}.")
    return dtype
