"""optimizers: gradient transforms as pure ``init/update`` pairs.

The contract, once::

    tx = optimizers.adam(learning_rate=1e-3)       # an Optimizer(init, update)
    state = tx.init(params)                        # a NamedTuple of arrays
    updates, state = tx.update(grads, state, params)
    params = optimizers.apply_updates(params, updates)

This is optax's GradientTransformation protocol, so an optimizer from here is a
drop-in ``tx`` for code written for optax (e.g. a Flax ``TrainState``).

* Every optimizer is one array rule lifted to pytrees by :func:`from_rule`.
* Hyperparameters are data: they live in the state (``state.hyperparams``),
  can be read with :func:`hyperparams` and changed with :func:`set_hyperparams`
  without recompiling, and a ``jax.vmap`` over states trains many models at once.
  ``update`` uses the optimizer's own values except those set with
  ``set_hyperparams``; a state from a different optimizer is an error.
* Any hyperparameter may be a schedule ``step -> value`` (see
  :mod:`optimizers.schedules`); its peak is data like a number
  (``set_hyperparams(state, learning_rate=3e-4)`` rescales warmup + cosine).
* Updates keep the param dtype; hyperparameters and moments are float32 at least
  (float64 for float64 params); low-precision leaves are computed in float32.
* Scale-free building blocks (``scale_by_adam``, ``scale_by_rms``,
  ``scale_by_momentum``, ``scale_by_lion``, ``scale_by_trust_ratio``, ``scale``,
  ``scale_by_learning_rate``) compose with :func:`chain` into new optimizers
  (``lamb``, ``lion``); :func:`partition` gives groups of params their own
  optimizers (``freeze()`` freezes a group); :func:`ema` keeps an average of the
  params (:func:`averaged_params`).
* On the CPU, large float32 leaves of Adam/AdamW, Momentum, AdaGrad and RMSProp
  are stepped in one pass by ``jax.ffi`` kernels (:mod:`optimizers._fused`);
  the numbers are those of the plain rule to float32 rounding.
* Every optimizer and wrapper also steps inside ``jax.shard_map`` on each
  device's blocks of sharded params (the kernels included); reductions over
  all leaves (``global_norm``, ``skip_nonfinite``'s test) then cover the whole,
  unsharded tree, so the result is the one of a single device.
"""

from . import schedules
from ._base import Optimizer, apply_updates, chain, step
from ._rule import from_rule
from .adagrad import AdagradState, adagrad
from .adam import AdamState, adam, adamw
from .averaging import EmaState, averaged_params, ema
from .composed import lamb, lion
from .hyperparams import hyperparams, set_hyperparams
from .packing import Packed, pack, unpack
from .partition import FreezeState, PartitionState, freeze, partition
from .rmsprop import RmspropState, rmsprop
from .scale import (
    ScaleByAdamState,
    ScaleByLionState,
    ScaleByMomentumState,
    ScaleByRmsState,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_lion,
    scale_by_momentum,
    scale_by_rms,
    scale_by_trust_ratio,
)
from .sgd import MomentumState, SgdState, momentum, sgd
from .transforms import TransformState, add_decayed_weights, clip, clip_by_global_norm, global_norm
from .wrappers import (
    AccumulateState,
    MaskedState,
    SkipNonfiniteState,
    SwitchState,
    accumulate,
    masked,
    skip_nonfinite,
    switch,
)

__all__ = [
    "AccumulateState", "AdagradState", "AdamState", "MaskedState", "MomentumState", "Optimizer",
    "Packed", "pack", "unpack",
    "RmspropState", "SgdState", "SkipNonfiniteState", "TransformState", "accumulate",
    "adagrad", "adam", "adamw", "add_decayed_weights", "apply_updates", "chain", "clip", "step",
    "clip_by_global_norm", "from_rule", "global_norm", "hyperparams", "masked", "momentum",
    "rmsprop", "schedules", "set_hyperparams", "sgd", "skip_nonfinite", "switch", "SwitchState",
    # building blocks, per-group optimizers, parameter averaging
    "EmaState", "FreezeState", "PartitionState", "ScaleByAdamState", "ScaleByLionState",
    "ScaleByMomentumState", "ScaleByRmsState", "averaged_params", "ema", "freeze", "lamb", "lion",
    "partition", "scale", "scale_by_adam", "scale_by_learning_rate", "scale_by_lion",
    "scale_by_momentum", "scale_by_rms", "scale_by_trust_ratio",
]
