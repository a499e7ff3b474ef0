"""Layers as ``(init, apply)`` pairs; the contract is in :mod:`fnn.layers.base`."""

from .base import Layer, ParamsError, named
from .combinators import parallel, residual, serial
from .conv import AvgPool2D, Conv2D, MaxPool2D
from .core import (
    Activation,
    Dense,
    Dropout,
    Elu,
    Flatten,
    Gelu,
    HardTanh,
    LeakyRelu,
    LogSoftmax,
    Relu,
    Sigmoid,
    Softmax,
    SoftSign,
    Tanh,
)
from .embedding import Embedding
from .norm import BatchNorm, GroupNorm, LayerNorm, RMSNorm, WeightNorm

__all__ = [
    "Activation", "AvgPool2D", "BatchNorm", "Conv2D", "Dense", "Dropout", "Elu", "Embedding",
    "Flatten", "Gelu", "GroupNorm", "HardTanh", "Layer", "LayerNorm", "LeakyRelu", "LogSoftmax",
    "MaxPool2D", "ParamsError", "RMSNorm", "Relu", "Sigmoid", "SoftSign", "Softmax", "Tanh",
    "WeightNorm", "parallel", "residual", "named", "serial",
]
