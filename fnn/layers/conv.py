"""2-D convolution and pooling on NHWC inputs (HWIO kernels)."""

from __future__ import annotations

import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import init as initializers

from .base import (
    Layer,
    check_float_dtype,
    check_input_shape,
    expect_keys,
    expect_shape,
    infer_shape,
    initializer,
    input_array,
    named,
    positive_int,
)

NHWC = ("NHWC", "HWIO", "NHWC")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _pair(owner: str, name: str, value) -> tuple[int, int]:
    """An int or a pair of ints, each >= 1, as a pair."""
    if _is_int(value):
        return (positive_int(owner, name, value),) * 2
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_int, value)):
        return tuple(positive_int(owner, name, v) for v in value)
    raise (ValueError if isinstance(value, (tuple, list)) else TypeError)(
        f"{owner}: {name} must be an int >= 1 or a pair of them; got {value!r}.")


def _padding(owner: str, padding):
    """'SAME', 'VALID', an int p (p on every side) or ((top, bottom), (left, right))."""
    expected = (f"{owner}: padding must be 'SAME', 'VALID', an int >= 0 or ((top, bottom), "
                f"(left, right)) of ints >= 0; got {padding!r}.")
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(expected)
        return padding.upper()
    if _is_int(padding):
        padding = ((padding, padding),) * 2
    try:
        pairs = tuple((operator.index(lo), operator.index(hi)) for lo, hi in padding)
        if not all(_is_int(v) for pair in padding for v in pair):
            raise TypeError
    except (TypeError, ValueError):
        raise TypeError(expected) from None
    if len(pairs) != 2 or any(v < 0 for pair in pairs for v in pair):
        raise ValueError(expected)
    return pairs


def _check_not_empty(name: str, x_shape: tuple, out_shape: tuple, window: str) -> None:
    """A ValueError when a window does not fit the input (a zero-size output)."""
    if 0 in out_shape[1:3] and 0 not in x_shape[1:3]:
        raise ValueError(f"{name}: input shape {tuple(x_shape)} gives an empty output "
                         f"{tuple(out_shape)}: the {window} does not fit the input's height and "
                         "width. Use padding='SAME', a smaller window or a larger input.")


def Conv2D(features: int, kernel_size=3, stride=1, padding="SAME", dilation=1,  # noqa: N802
           w_init: Callable | None = None, b_init: Callable | None = None) -> Layer:
    """2-D convolution (cross-correlation, as in every deep-learning library).

    y[n, i, j, o] = Σ_{di, dj, c} x[n, s·i + d·di, s·j + d·dj, c] · w[di, dj, c, o] + b[o]
    (s stride, d dilation, x padded first).

    Args:
      features: output channels.
      kernel_size: an int or (kh, kw).
      stride: an int or a pair.
      padding: "SAME" (output size ⌈input / stride⌉), "VALID" (no padding) or
        explicit ((top, bottom), (left, right)).
      dilation: an int or a pair (spacing of the kernel taps).
      w_init: initializer of the HWIO kernel ``w`` (kh, kw, in, features);
        default ``init.xavier_uniform()`` (fans include the receptive field).
      b_init: initializer of ``b`` (features,); default ``init.zeros()``.

    Returns:
      A :class:`Layer` for NHWC inputs with params ``{"w", "b"}``.

    Example:
        >>> fnn.Conv2D(32, 3).init(key, (-1, 28, 28, 1))[0]   # (-1, 28, 28, 32)
    """
    features = positive_int("Conv2D", "features", features)
    kernel = _pair("Conv2D", "kernel_size", kernel_size)
    strides = _pair("Conv2D", "stride", stride)
    dilations = _pair("Conv2D", "dilation", dilation)
    pad = _padding("Conv2D", padding)
    w_init = initializer("Conv2D", "w_init", w_init, initializers.xavier_uniform())
    b_init = initializer("Conv2D", "b_init", b_init, initializers.zeros())
    name = f"Conv2D({features}, {kernel_size})"
    window = f"kernel {kernel} (dilation {dilations}, stride {strides}, padding {pad!r})"

    def conv(x, w):
        dtype = jnp.result_type(x, w)  # as x @ w would promote
        return lax.conv_general_dilated(x.astype(dtype), w.astype(dtype), strides, pad,
                                        rhs_dilation=dilations, dimension_numbers=NHWC)

    def init(key, input_shape, dtype=jnp.float32):
        shape = check_input_shape(name, input_shape, rank=4,
                                  expected="(batch, height, width, channels) [NHWC]")
        dtype = check_float_dtype(name, dtype)
        k_w, k_b = jax.random.split(key)
        w = w_init(k_w, (*kernel, shape[-1], features), dtype)
        try:
            out = infer_shape(lambda x: conv(x, w), shape, dtype)
        except Exception as error:  # noqa: BLE001 - re-raised with the layer's name
            raise ValueError(f"{name}: the input shape {shape} is too small for the kernel "
                             f"{kernel} with stride {strides} and dilation {dilations}.") from error
        _check_not_empty(name, shape, out, window)
        return out, {"w": w, "b": b_init(k_b, (features,), dtype)}, {}

    def apply(params, state, x, *, key=None, train=False):
        expect_keys(name, params, ("w", "b"))
        x = input_array(name, x)
        if x.ndim != 4:
            raise ValueError(f"{name}: expected an NHWC input (batch, height, width, channels); "
                             f"got shape {x.shape}.")
        expect_shape(name, "w", params["w"], (*kernel, x.shape[-1], features), x=x)
        expect_shape(name, "b", params["b"], (features,))
        y = conv(x, params["w"])
        _check_not_empty(name, x.shape, y.shape, window)
        return y + params["b"], state

    return named(init, apply, "conv2d", name)


def _pool(kind: str, window, stride, padding) -> Layer:
    window = _pair(kind, "window", window)
    strides = _pair(kind, "stride", stride if stride is not None else window)
    pad = _padding(kind, padding)
    if not isinstance(pad, str) and any(p >= w for pair, w in zip(pad, window) for p in pair):
        # a window inside the padding alone has no input: max -inf, mean 0/0
        raise ValueError(f"{kind}: padding {padding!r} must be smaller than the window {window} "
                         "on each side (a window would cover padding only).")
    description = f"window {window} (stride {strides}, padding {pad!r})"
    pad = pad if isinstance(pad, str) else ((0, 0), *pad, (0, 0))  # no padding of N and C
    dims, steps = (1, *window, 1), (1, *strides, 1)
    name = f"{kind}({window})"

    def pool(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):  # e.g. uint8 images: pool as floats
            x = x.astype(jnp.result_type(float))
        if kind == "MaxPool2D":
            return lax.reduce_window(x, -jnp.inf, lax.max, dims, steps, pad)
        total = lax.reduce_window(x, 0.0, lax.add, dims, steps, pad)
        if pad == "VALID":
            return total / (window[0] * window[1])
        # average over the positions inside the input (SAME padding adds zeros at edges)
        count = lax.reduce_window(jnp.ones(x.shape[1:3], x.dtype)[None, :, :, None], 0.0,
                                  lax.add, dims, steps, pad)
        return total / count

    def init(key, input_shape, dtype=jnp.float32):
        shape = check_input_shape(name, input_shape, rank=4,
                                  expected="(batch, height, width, channels) [NHWC]")
        out = infer_shape(pool, shape, check_float_dtype(name, dtype))
        _check_not_empty(name, shape, out, description)
        return out, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        x = input_array(name, x)
        if x.ndim != 4:
            raise ValueError(f"{name}: expected an NHWC input (batch, height, width, channels); "
                             f"got shape {x.shape}.")
        y = pool(x)
        _check_not_empty(name, x.shape, y.shape, description)
        return y, state

    return named(init, apply, kind.lower(), name)


def MaxPool2D(window=2, stride=None, padding="VALID") -> Layer:  # noqa: N802
    """Max over ``window`` patches: y[n, i, j, c] = max x[n, s·i + di, s·j + dj, c].

    Args:
      window: an int or (wh, ww).
      stride: an int or a pair; default ``window`` (non-overlapping).
      padding: "VALID", "SAME" or ((top, bottom), (left, right)); padded
        positions never win the max.

    Example:
        >>> fnn.MaxPool2D(2).init(key, (-1, 28, 28, 8))[0]   # (-1, 14, 14, 8)
    """
    return _pool("MaxPool2D", window, stride, padding)


def AvgPool2D(window=2, stride=None, padding="VALID") -> Layer:  # noqa: N802
    """Mean over ``window`` patches: y[n, i, j, c] = mean x[n, s·i + di, s·j + dj, c].

    With padding the mean is over the positions inside the input (torch's
    ``count_include_pad=False``). Arguments as :func:`MaxPool2D`.

    Example:
        >>> fnn.AvgPool2D(2).init(key, (-1, 28, 28, 8))[0]   # (-1, 14, 14, 8)
    """
    return _pool("AvgPool2D", window, stride, padding)
