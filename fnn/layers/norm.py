"""Normalization: BatchNorm (running statistics), LayerNorm, RMSNorm, GroupNorm, WeightNorm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .base import (
    Layer,
    ParamsError,
    check_float_dtype,
    check_input_shape,
    expect_keys,
    expect_shape,
    float_input,
    hyperparameter,
    input_array,
    named,
    positive_int,
)


def _compute(x):
    """x in float32 at least (statistics of bfloat16/float16 inputs are computed in float32)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def BatchNorm(decay: float = 0.9, eps: float = 1e-5,  # noqa: N802
              axis_name: str | tuple[str, ...] | None = None) -> Layer:
    """Batch normalization (Ioffe & Szegedy 2015) over every axis but the last (features).

    Training: μ_B, σ²_B = mean and biased variance of the batch;
    y = γ (x − μ_B) / √(σ²_B + ε) + β, and the running statistics move:
    r_μ ← d·r_μ + (1 − d)·μ_B,  r_σ² ← d·r_σ² + (1 − d)·σ²_B · m/(m − 1)
    (m values per feature: the running variance is unbiased, as torch keeps it;
    ``decay=0.9`` is torch's ``momentum=0.1``). Evaluation uses the running
    statistics. ``init`` does not update them. Works after Dense (B, F) and
    Conv2D (B, H, W, C). Params ``{"scale": γ = 1, "offset": β = 0}``, state
    ``{"mean": 0, "var": 1}``.

    Batch split over devices (``axis_name``): inside ``jax.shard_map`` (or
    ``jax.vmap(..., axis_name=...)``) each of the K devices along the named mesh
    axis sees its own n examples. With ``axis_name`` the statistics are those of
    the whole batch of K·n examples: μ_B = pmean(local mean) and
    σ²_B = pmean(local mean of (x − μ_B)²) (``lax.pmean`` over the axis, two
    passes like one device's), m = K·n·(values per feature) in the unbiased
    factor, so outputs, running statistics (the same on every device) and
    gradients equal one device's BatchNorm on the whole batch. Every device must
    hold the same number of examples (shard_map and vmap ensure it). Without
    ``axis_name`` each device normalizes by its own block. Under ``jax.jit`` with a
    sharded batch (``fnn.train``'s ``mesh=``) the batch is one global array:
    leave ``axis_name`` unset there. Evaluation and ``init`` communicate nothing.

    Args:
      decay: d in [0, 1], the weight of the old running average.
      eps: ε > 0, added to the variance inside the square root.
      axis_name: None (one device), or the name of the mesh axis the batch is
        split over (a str, or a tuple of str for several axes), bound by an
        enclosing ``jax.shard_map`` or ``jax.vmap``.

    Example:
        >>> y, state = fnn.BatchNorm().apply(params, state, x, train=True)
        >>> bn = fnn.BatchNorm(axis_name="data")   # batch sharded over mesh axis "data"
        >>> step = jax.shard_map(lambda p, s, x: bn.apply(p, s, x, train=True), mesh=mesh,
        ...                      in_specs=(P(), P(), P("data")), out_specs=(P("data"), P()))
    """
    decay = hyperparameter("BatchNorm", "decay", decay, 0.0, 1.0)
    eps = hyperparameter("BatchNorm", "eps", eps, 0.0, low_open=True)
    axis_name = _axis_name("BatchNorm", axis_name)
    name = "BatchNorm" if axis_name is None else f"BatchNorm(axis_name={axis_name!r})"

    def over_devices(collective, x):
        """``collective(x, axis_name)`` (pmean, psum); x itself without an axis_name."""
        if axis_name is None:
            return x
        try:
            return collective(x, axis_name)
        except NameError as error:
            raise NameError(
                f"{name}: the axis name {axis_name!r} is not bound here ({error}). Apply the "
                f"model inside jax.shard_map over a mesh with that axis, or inside "
                f"jax.vmap(..., axis_name={axis_name!r}); for training on one device, or under "
                "jax.jit with a sharded batch (fnn.train's mesh=), use BatchNorm() without "
                "axis_name.") from error

    def _moving(running, batch):
        return (decay * running + (1 - decay) * batch).astype(running.dtype)

    def init(key, input_shape, dtype=jnp.float32):
        shape = check_input_shape(name, input_shape, min_rank=2,
                                  expected="(batch, ..., features)")
        dtype = check_float_dtype(name, dtype)
        features = shape[-1]
        params = {"scale": jnp.ones(features, dtype), "offset": jnp.zeros(features, dtype)}
        return shape, params, {"mean": jnp.zeros(features, dtype), "var": jnp.ones(features, dtype)}

    def apply(params, state, x, *, key=None, train=False):
        expect_keys(name, params, ("scale", "offset"))
        expect_keys(name, state, ("mean", "var"), "state")
        x = input_array(name, x, min_rank=1)
        for tree, k, v in (("params", "scale", params), ("params", "offset", params),
                           ("state", "mean", state), ("state", "var", state)):
            expect_shape(name, k, v[k], (x.shape[-1],), tree, x=x)
        axes = tuple(range(x.ndim - 1))
        x = float_input(x, params["scale"])
        xc = _compute(x)
        if train:
            # values per feature, over every device along axis_name (equal blocks)
            devices = over_devices(jax.lax.psum, 1)
            m = x.size // max(x.shape[-1], 1) * devices
            if m < 2:
                raise ValueError(
                    f"{name}: training needs more than one value per feature to estimate a "
                    f"variance; got a batch of {x.shape[0] if x.ndim > 1 else 1} example(s) "
                    f"(input shape {x.shape}). If the data set's size leaves a last batch of "
                    "one example, drop it (drop_remainder=True in fnn.train.fit or "
                    "fnn.data.batches) or pick a batch_size that leaves no remainder of 1; "
                    "otherwise train on larger batches. For inference on one example use "
                    "train=False (the running statistics).")
            mean = over_devices(jax.lax.pmean, xc.mean(axes))
            var = over_devices(jax.lax.pmean, jnp.mean(jnp.square(xc - mean), axes))  # biased
            unbiased = var * (m / (m - 1))  # kept in the running average, as torch does
            state = {"mean": _moving(state["mean"], mean), "var": _moving(state["var"], unbiased)}
        else:
            mean, var = _compute(state["mean"]), _compute(state["var"])
        y = (xc - mean) * jax.lax.rsqrt(var + eps) * params["scale"] + params["offset"]
        return y.astype(x.dtype), state

    return named(init, apply, "batchnorm", name)


def _axis_name(owner: str, axis_name: object) -> str | tuple[str, ...] | None:
    """None, a str, or a non-empty tuple of str (the named mesh axes); anything else is an error."""
    if axis_name is None or isinstance(axis_name, str):
        return axis_name
    if (isinstance(axis_name, tuple) and axis_name
            and all(isinstance(a, str) for a in axis_name)):
        return axis_name
    raise TypeError(
        f"{owner}: axis_name must be None, the name of a mesh axis (a str, e.g. 'data') or a "
        f"non-empty tuple of str; got {type(axis_name).__name__} {axis_name!r}. Pass the name "
        "the enclosing jax.shard_map's mesh (or jax.vmap's axis_name) gives the batch axis.")


def LayerNorm(eps: float = 1e-5) -> Layer:  # noqa: N802
    """Layer normalization (Ba, Kiros & Hinton 2016) over the last axis (H features).

    μ = (1/H) Σᵢ xᵢ, σ² = (1/H) Σᵢ (xᵢ − μ)²; y = γ (x − μ) / √(σ² + ε) + β.
    The same computation in training and evaluation; no state. Params
    ``{"scale": γ = 1, "offset": β = 0}``.

    Args:
      eps: ε > 0, added to the variance inside the square root.

    Example:
        >>> fnn.LayerNorm().init(key, (-1, 128))
    """
    eps = hyperparameter("LayerNorm", "eps", eps, 0.0, low_open=True)
    name = "LayerNorm"

    def init(key, input_shape, dtype=jnp.float32):
        shape = check_input_shape(name, input_shape, min_rank=2,
                                  expected="(batch, ..., features)")
        dtype = check_float_dtype(name, dtype)
        params = {"scale": jnp.ones(shape[-1], dtype), "offset": jnp.zeros(shape[-1], dtype)}
        return shape, params, {}

    def apply(params, state, x, *, key=None, train=False):
        expect_keys(name, params, ("scale", "offset"))
        x = input_array(name, x, min_rank=1)
        for k in ("scale", "offset"):
            expect_shape(name, k, params[k], (x.shape[-1],), x=x)
        x = float_input(x, params["scale"])
        xc = _compute(x)
        mean = xc.mean(-1, keepdims=True)
        var = jnp.mean(jnp.square(xc - mean), -1, keepdims=True)
        y = (xc - mean) * jax.lax.rsqrt(var + eps) * params["scale"] + params["offset"]
        return y.astype(x.dtype), state

    return named(init, apply, "layernorm", name)


def RMSNorm(eps: float = 1e-6) -> Layer:  # noqa: N802
    """Root-mean-square normalization (Zhang & Sennrich 2019) over the last axis (H features).

    y = x / √((1/H) Σᵢ xᵢ² + ε) · γ: LayerNorm without the mean subtraction and
    the offset. The same computation in training and evaluation; no state.
    Params ``{"scale": γ = 1}``. ``eps`` defaults to 1e-6 as ``flax.linen.RMSNorm``
    (torch's ``nn.RMSNorm`` uses the input dtype's machine epsilon when not given).

    Args:
      eps: ε > 0, added to the mean square inside the square root.

    Example:
        >>> out_shape, params, _ = fnn.RMSNorm().init(key, (-1, 128))   # {"scale": ones(128)}
    """
    eps = hyperparameter("RMSNorm", "eps", eps, 0.0, low_open=True)
    name = "RMSNorm"

    def init(key, input_shape, dtype=jnp.float32):
        shape = check_input_shape(name, input_shape, min_rank=2,
                                  expected="(batch, ..., features)")
        dtype = check_float_dtype(name, dtype)
        return shape, {"scale": jnp.ones(shape[-1], dtype)}, {}

    def apply(params, state, x, *, key=None, train=False):
        expect_keys(name, params, ("scale",))
        x = input_array(name, x, min_rank=1)
        expect_shape(name, "scale", params["scale"], (x.shape[-1],), x=x)
        x = float_input(x, params["scale"])
        xc = _compute(x)
        mean_square = jnp.mean(jnp.square(xc), -1, keepdims=True)
        y = xc * jax.lax.rsqrt(mean_square + eps) * params["scale"]
        return y.astype(x.dtype), state

    return named(init, apply, "rmsnorm", name)


def GroupNorm(num_groups: int, eps: float = 1e-6) -> Layer:  # noqa: N802
    """Group normalization (Wu & He 2018) of channels-last inputs (B, …, C).

    The C channels are split into G = ``num_groups`` groups of C/G consecutive
    channels; per example and group, μ and σ² are the mean and biased variance
    over every axis but the batch axis (height, width, … and the group's C/G
    channels); y = γ_c (x − μ) / √(σ² + ε) + β_c with a scale and offset per
    channel. It does not depend on the batch (no running statistics, the same in
    training and evaluation); G = 1 normalizes each example over all of its
    values, G = C is instance normalization. Params ``{"scale": γ = 1,
    "offset": β = 0}`` of shape (C,). ``eps`` defaults to 1e-6 as
    ``flax.linen.GroupNorm`` (torch's ``nn.GroupNorm`` uses 1e-5: pass
    ``eps=1e-5`` to match it).

    Args:
      num_groups: G, an int >= 1 that divides the number of channels.
      eps: ε > 0, added to the variance inside the square root.

    Example:
        >>> out_shape, params, _ = fnn.GroupNorm(4).init(key, (-1, 8, 8, 32))   # 4 groups of 8
    """
    num_groups = positive_int("GroupNorm", "num_groups", num_groups)
    eps = hyperparameter("GroupNorm", "eps", eps, 0.0, low_open=True)
    name = f"GroupNorm({num_groups})"

    def check_channels(channels, shape):
        if channels % num_groups:
            raise ValueError(f"{name}: num_groups={num_groups} must divide the number of channels "
                             f"(the last axis); got {channels} channels (input shape {shape}).")

    def init(key, input_shape, dtype=jnp.float32):
        shape = check_input_shape(name, input_shape, min_rank=2,
                                  expected="(batch, ..., channels)")
        check_channels(shape[-1], shape)
        dtype = check_float_dtype(name, dtype)
        params = {"scale": jnp.ones(shape[-1], dtype), "offset": jnp.zeros(shape[-1], dtype)}
        return shape, params, {}

    def apply(params, state, x, *, key=None, train=False):
        expect_keys(name, params, ("scale", "offset"))
        x = input_array(name, x, min_rank=2)
        check_channels(x.shape[-1], x.shape)
        for k in ("scale", "offset"):
            expect_shape(name, k, params[k], (x.shape[-1],), x=x)
        x = float_input(x, params["scale"])
        xc = _compute(x)
        grouped = xc.reshape(*x.shape[:-1], num_groups, x.shape[-1] // num_groups)
        axes = (*range(1, x.ndim - 1), x.ndim)  # spatial axes and the channels in a group
        mean = grouped.mean(axes, keepdims=True)
        var = jnp.mean(jnp.square(grouped - mean), axes, keepdims=True)
        normalized = ((grouped - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
        y = normalized * params["scale"] + params["offset"]
        return y.astype(x.dtype), state

    return named(init, apply, "groupnorm", name)


def WeightNorm(layer: Layer) -> Layer:  # noqa: N802
    """Weight normalization (Salimans & Kingma 2016) of a layer with a weight ``w``.

    w = g · v / ‖v‖, the norm taken per output unit (over every axis but the
    last), so the direction v and the length g are learned separately. Params:
    the inner layer's, with ``w`` replaced by ``v`` (initialized to the inner
    initializer's w) and ``g`` (initialized to ‖w‖, so the initial w is unchanged).

    Args:
      layer: a layer with a weight ``w`` whose last axis is the output units
        (``Dense``, ``Conv2D``).

    Example:
        >>> fnn.WeightNorm(fnn.Dense(64)).init(key, (-1, 32))
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"WeightNorm: expected a layer such as fnn.Dense(64); got {layer!r}.")
    name = f"WeightNorm({layer.name})"

    def norm(v):
        vc = _compute(v)
        return jnp.sqrt(jnp.sum(jnp.square(vc), axis=tuple(range(v.ndim - 1))))

    def init(key, input_shape, dtype=jnp.float32):
        out_shape, params, state = layer.init(key, input_shape, dtype)
        if "w" not in params:
            raise ValueError(f"{name}: the layer has no weight 'w' to normalize "
                             f"(params: {sorted(params)}).")
        params = dict(params)
        v = params.pop("w")
        g = norm(v)
        if not isinstance(g, jax.core.Tracer) and not np.all(np.asarray(g) > 0):
            # w = g·v/‖v‖ is 0/0 for a unit whose initial weights are all zero
            unit = int(np.argmin(np.asarray(g) > 0))
            raise ValueError(f"{name}: the initial weight w has all zeros for output unit {unit};"
                             " its direction v/‖v‖ is undefined. Give the layer a random w_init "
                             "(the default xavier_uniform, he_normal, ...).")
        return out_shape, {**params, "v": v, "g": g.astype(v.dtype)}, state

    def apply(params, state, x, *, key=None, train=False):
        if not isinstance(params, dict) or "v" not in params or "g" not in params:
            found = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ParamsError("", f"{name} expects params with 'v' and 'g'; got {found}.")
        inner = {k: p for k, p in params.items() if k not in ("v", "g")}
        v, g = params["v"], params["g"]
        expect_shape(name, "g", g, (v.shape[-1],))
        w = (_compute(v) * (_compute(g) / norm(v))).astype(v.dtype)
        try:
            return layer.apply({**inner, "w": w}, state, x, key=key, train=train)
        except ParamsError as error:  # the user's params hold v, not w
            if error.path.startswith("['w']"):
                raise ParamsError("['v']" + error.path[5:], error.detail, error.tree) from None
            raise

    return named(init, apply, "weightnorm", name)
