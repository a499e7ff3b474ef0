"""Embedding: integer ids to learned vectors."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import init as initializers

from .base import (
    Layer,
    check_float_dtype,
    check_input_shape,
    expect_keys,
    expect_shape,
    initializer,
    input_array,
    named,
    positive_int,
)


def Embedding(num_embeddings: int, features: int,  # noqa: N802 - layers are CamelCase
              embedding_init: Callable | None = None) -> Layer:
    """A lookup table: each integer id i in [0, num_embeddings) becomes row i of E.

    y[..., :] = E[x[...], :] with E of shape (num_embeddings, features), so an
    input of ids (batch, ...) gives (batch, ..., features) in E's dtype. The
    gradient reaches only the rows that were looked up (the one-hot product
    onehot(x) E, computed as a gather). Ids must be integers: a float input is a
    TypeError. Concrete ids outside [0, num_embeddings) are a ValueError naming
    the first; traced ones (under ``jit``/``vmap``) cannot be checked and give
    NaN rows, never another row's vector (a negative id does not wrap around).

    Args:
      num_embeddings: the number of ids (the vocabulary size).
      features: the length of each vector.
      embedding_init: initializer ``(key, shape, dtype) -> array`` of ``embedding``
        (num_embeddings, features); default N(0, 1/features), as ``flax.linen.Embed``
        (``init.variance_scaling(1.0, "fan_in", "normal", in_axis=-1, out_axis=0)``;
        torch's ``nn.Embedding`` draws N(0, 1): pass ``init.normal(1.0)``).

    Returns:
      A :class:`Layer` with params ``{"embedding"}`` and no state.

    Example:
        >>> emb = fnn.Embedding(1000, 64)
        >>> out_shape, params, _ = emb.init(key, (-1, 16))    # (-1, 16, 64)
        >>> vectors, _ = emb.apply(params, {}, jnp.array([[3, 1, 4]]))   # (1, 3, 64)
    """
    num_embeddings = positive_int("Embedding", "num_embeddings", num_embeddings)
    features = positive_int("Embedding", "features", features)
    embedding_init = initializer(
        "Embedding", "embedding_init", embedding_init,
        initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=-1, out_axis=0))
    name = f"Embedding({num_embeddings}, {features})"

    def init(key, input_shape, dtype=jnp.float32):
        shape = check_input_shape(name, input_shape, min_rank=1, expected="(batch, ...) of ids")
        dtype = check_float_dtype(name, dtype)
        return (*shape, features), {"embedding": embedding_init(
            key, (num_embeddings, features), dtype)}, {}

    def apply(params, state, x, *, key=None, train=False):
        expect_keys(name, params, ("embedding",))
        table = params["embedding"]
        expect_shape(name, "embedding", table, (num_embeddings, features))
        ids = input_array(name, x)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            hint = " (cast with x.astype(jnp.int32) if they hold whole numbers)" \
                if jnp.issubdtype(ids.dtype, jnp.floating) else ""
            raise TypeError(f"{name}: x must be integer ids in [0, {num_embeddings}); got dtype "
                            f"{ids.dtype}{hint}.")
        if not isinstance(x, jax.core.Tracer):  # concrete (a captured constant too): check
            _check_ids(name, np.asarray(x), num_embeddings)
        valid = (ids >= 0) & (ids < num_embeddings)
        rows = jnp.take(table, jnp.where(valid, ids, 0), axis=0)
        return jnp.where(valid[..., None], rows, jnp.asarray(jnp.nan, table.dtype)), state

    return named(init, apply, "embedding", name)


def _check_ids(name: str, ids: np.ndarray, num_embeddings: int) -> None:
    bad = (ids < 0) | (ids >= num_embeddings)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: ids must be in [0, {num_embeddings}); got {ids[index]} at "
                         f"x[{', '.join(map(str, index))}] ({int(bad.sum())} of {ids.size} ids "
                         "out of range).")


__all__ = ["Embedding"]
