"""The layer contract, once (in the style of ``jax.example_libraries.stax``).

A layer is a pair of pure functions, ``Layer(init, apply)``::

    init(key, input_shape, dtype=jnp.float32) -> (output_shape, params, state)
    apply(params, state, x, *, key=None, train=False) -> (y, state)

* Shapes include the batch axis, which may be -1 (unknown). Shape errors surface
  at ``init``, before any tracing, and name the layer and the shapes.
* Params and state are dicts with readable names (``{"w": …, "b": …}``), created
  in ``dtype``; parameter-free layers have ``{}`` params, stateless layers ``{}``
  state. State keeps its dtype across steps (it can be a ``lax.scan`` carry).
* ``train`` is a Python bool. ``key`` is needed only where a layer is random in
  training (Dropout); a missing key is an error that says how to pass one.
* Combinators nest their children's dicts under ``"<index>_<name>"``
  (``"0_dense"``, ``"1_batchnorm"``, …; the index keeps names unique and stable
  when a layer kind repeats) and give child i the key ``jax.random.fold_in(key, i)``.
* Params or state that do not fit the model raise :class:`ParamsError` naming
  the path, e.g. ``params['2_serial']['0_dense']['w']``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Layer(NamedTuple):
    """An ``(init, apply)`` pair; see the module docstring. Unpacks like stax's pairs.

    ``name`` (used by combinators for the child's key, e.g. ``"0_dense"``) is read
    from ``init.layer_name``; :func:`named` sets it. A hand-made
    ``Layer(my_init, my_apply)`` is named ``"layer"``.
    """

    init: Callable[..., tuple[Any, dict, dict]]
    apply: Callable[..., tuple[Any, dict]]

    @property
    def name(self) -> str:
        return getattr(self.init, "layer_name", "layer")


def named(init: Callable, apply: Callable, name: str) -> Layer:
    """``Layer(init, apply)`` whose params nest under ``"<index>_<name>"`` in combinators."""
    init.layer_name = name
    return Layer(init, apply)


class ParamsError(ValueError):
    """Params or state that do not fit the model; the message names the path.

    ``tree`` is "params" or "state"; ``path`` the keys below it (``['0_dense']['w']``).
    """

    def __init__(self, path: str, message: str, tree: str = "params"):
        super().__init__(f"{tree}{path}: {message}")
        self.path, self.detail, self.tree = path, message, tree

    def within(self, child: str) -> ParamsError:
        return ParamsError(f"[{child!r}]{self.path}", self.detail, self.tree)


def expect_keys(layer: str, tree: Any, keys: Sequence[str], what: str = "params") -> None:
    """Raises ParamsError unless ``tree`` is a dict with exactly ``keys``."""
    if not isinstance(tree, dict) or set(tree) != set(keys):
        found = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        hint = (" (pass the state returned by init or by the previous apply)"
                if what == "state" else " (params must come from this model's init)")
        raise ParamsError("", f"{layer} expects {what} with keys {sorted(keys)}; got {found}"
                              f"{hint}.", what)


def expect_shape(layer: str, name: str, array: Any, shape: tuple, what: str = "params",
                 x: Any = None) -> None:
    """Raises ParamsError naming ``[name]`` unless ``array`` has ``shape``.

    With the input ``x`` given, the message names its shape too (the params or
    the input may be the wrong one).
    """
    if tuple(jnp.shape(array)) != tuple(shape):
        given = "" if x is None else f" for an input of shape {tuple(jnp.shape(x))}"
        raise ParamsError(f"[{name!r}]", f"{layer} expects shape {tuple(shape)}{given}; got "
                                         f"{tuple(jnp.shape(array))}.", what)


def check_train(layer: str, train: Any) -> bool:
    """``train`` as a Python bool, or a TypeError saying how to keep it static under jit."""
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"{layer}: train must be a Python bool (it selects the program); got "
                        f"{train!r}. Under jax.jit mark it static, e.g. "
                        "jax.jit(step, static_argnames='train').")
    return bool(train)


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
        if isinstance(input_shape, (str, bytes)):
            raise TypeError
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
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
