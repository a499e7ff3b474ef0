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
* Combinators nest their children's dicts under stable names: ``"<name>_<k>"``,
  k counting the earlier children with that layer name (``"dense_0"``,
  ``"batchnorm_0"``, ``"dense_1"``, …), or a name the user gives in a
  ``(name, layer)`` pair. Each child's keys derive from its name
  (``init.leaf_key(key, (DictKey(name),))``), not its position, so inserting a
  layer renames only later layers of its own kind: adding a Dropout or Relu
  changes no other layer's params, initial values or dropout masks.
* Params or state that do not fit the model raise :class:`ParamsError` naming
  the path, e.g. ``params['serial_0']['dense_0']['w']``.
* Every layer made with :func:`named` checks its key (a PRNG key, not an int
  seed) in ``init`` and ``apply`` and that ``train`` is a bool. Hyperparameters
  are checked by :func:`hyperparameter`: with NumPy when concrete (a ``jnp``
  scalar captured by a jitted function included); a traced one is used as
  given, NaN when out of range, so a bad value is never a plausible output.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from init._checks import check_key  # the one PRNG-key check, shared with the initializers


class Layer(NamedTuple):
    """An ``(init, apply)`` pair; see the module docstring. Unpacks like stax's pairs.

    ``name`` (combinators name the child ``"<name>_<k>"``, e.g. ``"dense_0"``) is read
    from ``init.layer_name``; :func:`named` sets it. A hand-made
    ``Layer(my_init, my_apply)`` is named ``"layer"``.
    """

    init: Callable[..., tuple[Any, dict, dict]]
    apply: Callable[..., tuple[Any, dict]]

    @property
    def name(self) -> str:
        return getattr(self.init, "layer_name", "layer")


def named(init: Callable, apply: Callable, name: str, label: str | None = None) -> Layer:
    """``Layer(init, apply)`` whose params nest under ``"<name>_<k>"`` in combinators.

    The pair is wrapped with the checks every layer shares, so that bad arguments
    fail at the user's call with the layer's ``label`` (default ``name``) in the
    message: ``init``'s key must be a PRNG key; ``apply``'s key, when given, too;
    ``train`` must be a Python bool.
    """
    label = label or name

    def checked_init(key, input_shape, *args, **kwargs):
        check_key(f"{label}.init", key)
        return init(key, input_shape, *args, **kwargs)

    def checked_apply(params, state, x, *, key=None, train=False):
        if key is not None:
            check_key(f"{label}.apply", key)
        return apply(params, state, x, key=key, train=check_train(label, train))

    for wrapper, inner, what in ((checked_init, init, "init"), (checked_apply, apply, "apply")):
        # Python's own argument errors then read "Dense(3).apply() takes 3 positional ..."
        wrapper.__name__, wrapper.__qualname__ = what, f"{label}.{what}"
        wrapper.__doc__ = inner.__doc__
    checked_init.layer_name = name
    return Layer(checked_init, checked_apply)


class ParamsError(ValueError):
    """Params or state that do not fit the model; the message names the path.

    ``tree`` is "params" or "state"; ``path`` the keys below it (``['dense_0']['w']``).
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


def positive_int(owner: str, name: str, value: Any) -> int:
    """``value`` as an int >= 1 (NumPy ints too), or a TypeError/ValueError naming it."""
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{owner}: {name} must be an int >= 1; got {type(value).__name__} "
                        f"{value!r}.") from None
    if number < 1:
        raise ValueError(f"{owner}: {name} must be an int >= 1; got {number}.")
    return number


def initializer(owner: str, name: str, value: Callable | None, default: Callable) -> Callable:
    """An initializer ``(key, shape, dtype) -> array`` (``default`` for None) that is
    called with a check of what it returns; a TypeError names ``name`` otherwise."""
    value = default if value is None else value
    if not callable(value) or isinstance(value, Layer):
        raise TypeError(f"{owner}: {name} must be an initializer (key, shape, dtype) -> array, "
                        f"e.g. init.xavier_uniform(); got {type(value).__name__} {value!r}.")

    def draw(key, shape, dtype):
        try:
            array = value(key, shape, dtype)
        except TypeError as error:  # e.g. w_init=init.he_normal, the factory itself
            raise TypeError(f"{owner}: {name} must be an initializer (key, shape, dtype) -> "
                            f"array; calling it failed: {error}. Initializer factories are "
                            "called, e.g. w_init=init.he_normal().") from error
        if tuple(jnp.shape(array)) != tuple(shape):
            raise ValueError(f"{owner}: {name} returned shape {tuple(jnp.shape(array))}; "
                             f"expected {tuple(shape)}.")
        return jnp.asarray(array, dtype)

    return draw


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    def text(v):
        return "inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:g}"
    return f"{'(' if low_open else '['}{text(low)}, {text(high)}{')' if high_open else ']'}"


def hyperparameter(owner: str, name: str, value: Any, low: float = -math.inf,
                   high: float = math.inf, *, low_open: bool = False,
                   high_open: bool = False) -> Any:
    """A real hyperparameter in the interval low..high (infinite ends are always open).

    A concrete value (a Python or NumPy number, or a scalar array, e.g. a
    ``jnp`` scalar captured by a jitted function) is checked here, with NumPy,
    and returned as a Python float. A tracer (the layer built inside ``jit`` or
    ``vmap`` from a traced value) cannot be checked; it is returned as
    ``where(in range, value, nan)``, so an out-of-range value makes the layer's
    output NaN instead of a plausible wrong number.
    """
    low_open, high_open = low_open or low == -math.inf, high_open or high == math.inf
    interval = _interval(low, high, low_open, high_open)
    if isinstance(value, jax.core.Tracer):
        if jnp.ndim(value) != 0 or not jnp.issubdtype(value.dtype, jnp.number):
            raise TypeError(f"{owner}: {name} must be a real scalar in {interval}; got a traced "
                            f"array of shape {jnp.shape(value)} and dtype {value.dtype}.")
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return jnp.where(above & below, value, jnp.nan)
    array = None if isinstance(value, (bool, np.bool_, str, bytes)) or value is None else \
        np.asarray(value) if isinstance(value, (int, float, np.generic, np.ndarray, jax.Array)) \
        else None
    if array is None or array.dtype.kind not in "fiu":
        raise TypeError(f"{owner}: {name} must be a real number in {interval}; got "
                        f"{type(value).__name__} {value!r}.")
    if array.ndim != 0:
        raise ValueError(f"{owner}: {name} must be a scalar in {interval}; got an array of "
                         f"shape {array.shape}.")
    number = float(array)
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if not (above and below):
        raise ValueError(f"{owner}: {name} must be in {interval}; got {number!r}.")
    return number


def input_array(layer: str, x: Any, min_rank: int = 0) -> jax.Array:
    """The input as an array of numbers with at least ``min_rank`` axes, or a clear error."""
    if not isinstance(x, jax.Array):
        try:
            x = jnp.asarray(x)
        except (TypeError, ValueError) as error:
            raise TypeError(f"{layer}: x must be an array; got {type(x).__name__}.") from error
    if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_):
        raise TypeError(f"{layer}: x must be an array of numbers; got dtype {x.dtype}.")
    if x.ndim < min_rank:
        raise ValueError(f"{layer}: x must have at least {min_rank} axes; got shape {x.shape}.")
    return x


def float_input(x: jax.Array, like: jax.Array) -> jax.Array:
    """x itself if floating, else x in ``like``'s dtype (int inputs are not truncated back)."""
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(like.dtype)


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
        if isinstance(input_shape, (str, bytes)) or any(
                isinstance(d, (bool, np.bool_)) for d in input_shape):
            raise TypeError
        shape = tuple(operator.index(d) for d in input_shape)
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
