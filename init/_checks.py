"""What an initializer is, and the argument checks shared by all of them.

Every check raises at the call that received the bad argument, eagerly (shapes
and dtypes are static), with a message naming the function, the argument,
what was expected and what was given.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np


class Initializer(Protocol):
    """``(key, shape, dtype=jnp.float32) -> array``: the signature of ``jax.nn.initializers``."""

    def __call__(self, key: jax.Array, shape: Sequence[int],
                 dtype: Any = jnp.float32) -> jax.Array: ...


FLOAT_DTYPES = "float32, float64, bfloat16 or float16"


def check_key(owner: str, key: Any, name: str = "key") -> None:
    """TypeError unless ``key`` is one PRNG key: a typed key (``jax.random.key``) or a raw
    uint32 key (``jax.random.PRNGKey``: shape (2,), or (4,) for the "rbg" implementation).

    A batch of keys is a ValueError that points at ``jax.vmap``. Only dtype and shape are
    read, so the check is safe inside a trace. The one key check of fnn, init and the layers.

    Example:
        >>> check_key("fit", 3)   # TypeError: fit: key must be a JAX PRNG key, e.g.
        ...                       # jax.random.key(3), not the seed 3 itself; got the int 3.
    """
    if key is None:
        raise TypeError(f"{owner}: a PRNG key is required, e.g. {name}=jax.random.key(0).")
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if isinstance(key, (jax.Array, np.ndarray)) and dtype is not None:
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            if shape == ():
                return
            raise ValueError(f"{owner}: {name} must be a single PRNG key; got a batch of keys "
                             f"of shape {shape} (use jax.vmap over the keys to draw a batch).")
        if dtype == np.uint32 and len(shape) >= 1 and shape[-1] in (2, 4):
            if len(shape) == 1:
                return
            raise ValueError(f"{owner}: {name} must be a single PRNG key; got a batch of raw "
                             f"keys of shape {shape} (use jax.vmap over the keys to draw a "
                             "batch).")
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        hint = f"jax.random.key({int(key)}), not the seed {int(key)} itself"
        described = f"the int {int(key)}"
    elif dtype is not None and shape is not None:
        hint = "jax.random.key(0)"
        described = f"an array of dtype {dtype} and shape {tuple(shape)}"
    else:
        hint = "jax.random.key(0)"
        described = f"{type(key).__name__} {key!r}"
    raise TypeError(f"{owner}: {name} must be a JAX PRNG key, e.g. {hint}; got {described}.")


def check_shape(owner: str, shape: Any) -> tuple[int, ...]:
    """The shape as a tuple of non-negative ints (an int n means (n,))."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"{owner}: shape must be a tuple of non-negative ints, e.g. (784, 256); "
                        f"got {shape!r}.") from None
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0
               for d in dims):
        raise ValueError(f"{owner}: shape must be a tuple of non-negative ints, e.g. (784, 256); "
                         f"got {shape!r}.")
    return tuple(int(d) for d in dims)


def check_dtype(owner: str, dtype: Any) -> np.dtype:
    """The dtype, which must be a real floating-point dtype."""
    if dtype is None:
        raise TypeError(f"{owner}: dtype must be a floating-point dtype ({FLOAT_DTYPES}); "
                        "got None.")
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{owner}: dtype must be a floating-point dtype ({FLOAT_DTYPES}); "
                        f"got {dtype!r}, which is not a dtype.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{owner}: dtype must be a floating-point dtype ({FLOAT_DTYPES}); "
                        f"got {dtype.name}.")
    return dtype


def _is_tracer(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def check_number(owner: str, name: str, value: Any, *, non_negative: bool = False,
                 finite: bool = True) -> None:
    """TypeError unless ``value`` is a real number (or a scalar array; a tracer is unchecked);
    ValueError if it is NaN, infinite (unless ``finite`` is False), or negative when
    ``non_negative``.

    The check reads the value with NumPy only (never jnp), so a concrete array captured
    by a jitted function is checked without being traced.
    """
    if _is_tracer(value):
        return
    is_scalar_array = isinstance(value, (jax.Array, np.ndarray, np.generic)) and (
        np.ndim(value) == 0 and (jnp.issubdtype(value.dtype, jnp.floating)
                                 or jnp.issubdtype(value.dtype, jnp.integer)))
    if not (is_scalar_array or (isinstance(value, numbers.Real) and not isinstance(value, bool))):
        raise TypeError(f"{owner}: {name} must be a real number; got {value!r}.")
    number = float(np.asarray(value, np.float64))
    if np.isnan(number) or (finite and not np.isfinite(number)):
        expected = "a finite number" if finite else "a number (not NaN)"
        raise ValueError(f"{owner}: {name} must be {expected}; got {value!r}.")
    if non_negative and not number >= 0:
        raise ValueError(f"{owner}: {name} must be >= 0; got {value!r}.")


def nan_unless(value: Any, ok: Callable[[Any], Any]) -> Any:
    """``value``, or NaN where ``ok(value)`` is False, for a value whose check a trace skipped.

    Concrete values were checked eagerly (:func:`check_number`) and come back
    unchanged (``ok`` is not called); inside ``jax.jit``/``vmap``/``grad`` a bad
    hyperparameter then makes the weights (and their gradient) NaN instead of
    plausible wrong numbers.
    """
    if not _is_tracer(value):
        return value
    # a product, not a where(): the gradient through a NaN factor is NaN too
    return value * jnp.where(ok(value), 1.0, jnp.nan)


def check_fits(owner: str, name: str, value: Any, dtype: Any) -> None:
    """ValueError if the concrete ``value`` overflows ``dtype`` (e.g. 1e5 in float16)."""
    if _is_tracer(value):
        return
    largest = float(jnp.finfo(dtype).max)
    if abs(float(np.asarray(value, np.float64))) > largest:
        raise ValueError(f"{owner}: {name}={value!r} overflows {jnp.dtype(dtype).name} (largest "
                         f"finite value {largest:g}); use a wider dtype or a smaller {name}.")


def check_axis(owner: str, name: str, axis: Any) -> None:
    """TypeError unless ``axis`` is an int."""
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"{owner}: {name} must be an int axis; got {axis!r}.")


def normalize_axes(owner: str, shape: Sequence[int], axes: Sequence[int],
                   names: Sequence[str]) -> tuple[int, ...]:
    """Each axis as a non-negative index into ``shape``, or a ValueError naming it."""
    rank = len(shape)
    out = []
    for axis, name in zip(axes, names):
        if not -rank <= axis < rank:
            raise ValueError(f"{owner}: cannot compute fans of shape {tuple(shape)}: {name}={axis} "
                             f"is out of range for rank {rank} (expected {-rank} <= {name} < "
                             f"{rank}).")
        out.append(axis % rank)
    return tuple(out)
