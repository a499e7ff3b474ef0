"""fnn: layers as ``(init, apply)`` pairs, losses, gradient checking, data, training, search.

    import fnn
    model = fnn.serial(fnn.Dense(256), fnn.BatchNorm(), fnn.Relu(), fnn.Dropout(0.5),
                       fnn.Dense(10))
    out_shape, params, state = model.init(jax.random.key(0), (-1, 64))
    logits, state = model.apply(params, state, x, key=dropout_key, train=True)
    logits, _ = model.apply(params, state, x)                 # evaluation: no key needed

The layer contract is documented once in :mod:`fnn.layers.base`. Submodules:
:mod:`fnn.activations`, :mod:`fnn.losses`, :mod:`fnn.gradcheck`, :mod:`fnn.data`,
:mod:`fnn.train`, :mod:`fnn.callbacks`, :mod:`fnn.tuning`; ``python -m fnn`` runs the main job.
"""

from . import activations, callbacks, data, gradcheck, losses, sharding, train, tuning
from .layers import (
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Elu,
    Embedding,
    Flatten,
    Gelu,
    GroupNorm,
    HardTanh,
    Layer,
    LayerNorm,
    LeakyRelu,
    LogSoftmax,
    MaxPool2D,
    ParamsError,
    Relu,
    RMSNorm,
    Sigmoid,
    Softmax,
    SoftSign,
    Tanh,
    WeightNorm,
    parallel,
    residual,
    serial,
)

__all__ = [
    "Activation", "AvgPool2D", "BatchNorm", "Conv2D", "Dense", "Dropout", "Elu", "Embedding",
    "Flatten", "Gelu", "GroupNorm", "HardTanh", "Layer", "LayerNorm", "LeakyRelu", "LogSoftmax",
    "MaxPool2D", "ParamsError", "RMSNorm", "Relu", "Sigmoid", "SoftSign", "Softmax", "Tanh",
    "WeightNorm", "activations", "callbacks", "data", "gradcheck", "losses", "parallel",
    "residual", "serial", "sharding", "train", "tuning",
]
