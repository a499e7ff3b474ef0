"""Fan-in and fan-out of a weight shape.

The rule (the same as ``jax.nn.initializers`` for rank ≥ 2, and as
``torch.nn.init`` once its (out, in, *kernel) layout is taken into account):

* rank 0 (a scalar): fan_in = fan_out = 1;
* rank 1 (a vector, e.g. a bias): fan_in = fan_out = shape[0];
* rank ≥ 2: fan_in = shape[in_axis] × r, fan_out = shape[out_axis] × r, where
  the receptive field r is the product of every axis that is not ``in_axis``,
  ``out_axis`` or in ``batch_axis`` (r = 1 for a matrix). A dense (in, out)
  matrix has fans (in, out); a conv kernel in HWIO layout (h, w, in, out) has
  fans (h·w·in, h·w·out); the same holds for 1-D (W, I, O) and 3-D
  (D, H, W, I, O) kernels and any rank above.

Axes of ``batch_axis`` hold independent weight sets (e.g. a stack of layers)
and count in neither fan.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._checks import check_axis, check_shape, normalize_axes


def batch_axes(owner: str, batch_axis: Sequence[int] | int) -> tuple[int, ...]:
    """``batch_axis`` as a tuple of ints (an int means one axis)."""
    axes = (batch_axis,) if isinstance(batch_axis, (int, np.integer)) else batch_axis
    try:
        axes = tuple(axes)
    except TypeError:
        raise TypeError(f"{owner}: batch_axis must be an int or a sequence of ints; "
                        f"got {batch_axis!r}.") from None
    for axis in axes:
        check_axis(owner, "batch_axis", axis)
    return axes


def compute_fans(shape: Sequence[int], in_axis: int = -2, out_axis: int = -1,
                 batch_axis: Sequence[int] | int = ()) -> tuple[float, float]:
    """(fan_in, fan_out) of a weight shape, by the rule in this module's docstring.

    Args:
      shape: the weight shape, e.g. (in, out) or a conv kernel (h, w, in, out).
      in_axis: the input-feature axis (used for rank ≥ 2 only).
      out_axis: the output-feature axis (used for rank ≥ 2 only).
      batch_axis: axes of independent weight sets, in neither fan.

    Returns:
      ``(fan_in, fan_out)`` as floats.

    Raises:
      ValueError: an axis is out of range, or two of in_axis, out_axis and
        batch_axis name the same axis.

    Example:
      >>> init.compute_fans((3, 3, 16, 32))   # HWIO conv kernel: 9 × 16 and 9 × 32
      (144.0, 288.0)
      >>> init.compute_fans((784, 256)), init.compute_fans((10,)), init.compute_fans(())
      ((784.0, 256.0), (10.0, 10.0), (1.0, 1.0))
    """
    check_axis("compute_fans", "in_axis", in_axis)
    check_axis("compute_fans", "out_axis", out_axis)
    batch = batch_axes("compute_fans", batch_axis)
    shape = check_shape("compute_fans", shape)
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    names = ("in_axis", "out_axis", *["batch_axis"] * len(batch))
    in_axis, out_axis, *batch = normalize_axes("compute_fans", shape, (in_axis, out_axis, *batch),
                                               names)
    if in_axis == out_axis or in_axis in batch or out_axis in batch:
        raise ValueError(
            f"compute_fans: cannot compute fans of shape {shape}: in_axis ({in_axis}), out_axis "
            f"({out_axis}) and batch_axis ({tuple(batch)}) must name different axes."
        )
    receptive = int(np.prod([d for i, d in enumerate(shape)
                             if i not in (in_axis, out_axis, *batch)], dtype=np.int64))
    return float(shape[in_axis] * receptive), float(shape[out_axis] * receptive)
