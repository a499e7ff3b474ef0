"""Fan-in and fan-out of a weight shape.

Rule (the same as ``jax.nn.initializers``):

* rank 0: fan_in = fan_out = 1;
* rank 1: fan_in = fan_out = shape[0];
* rank ≥ 2: fan_in = shape[in_axis] × receptive field, fan_out = shape[out_axis] ×
  receptive field, where the receptive field is the product of every axis that
  is not ``in_axis``, ``out_axis`` or a ``batch_axis``. A dense (in, out) matrix
  has fans (in, out); a conv kernel in HWIO layout (h, w, in, out) has fans
  (h·w·in, h·w·out).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._checks import check_shape, normalize_axes


def compute_fans(shape: Sequence[int], in_axis: int = -2, out_axis: int = -1,
                 batch_axis: Sequence[int] | int = ()) -> tuple[float, float]:
    """(fan_in, fan_out) of ``shape`` by the rule in this module's docstring.

    Example:
        >>> compute_fans((3, 3, 16, 32))   # HWIO conv kernel: (144.0, 288.0)
    """
    shape = check_shape("compute_fans", shape)
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    batch = (batch_axis,) if isinstance(batch_axis, int) else tuple(batch_axis)
    in_axis, out_axis, *batch = normalize_axes("compute_fans", shape, (in_axis, out_axis, *batch))
    if in_axis == out_axis or in_axis in batch or out_axis in batch:
        raise ValueError(
            f"compute_fans: cannot compute fans of shape {shape}: in_axis, out_axis and batch_axis "
            "must be different axes."
        )
    receptive = np.prod([d for i, d in enumerate(shape) if i not in (in_axis, out_axis, *batch)])
    return float(shape[in_axis] * receptive), float(shape[out_axis] * receptive)
