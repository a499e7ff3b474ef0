"""Bad input to partition/freeze, the building blocks, LAMB/Lion and ema: a clear error naming
the argument (and the fix), raised at the call that received it.

Same form as test_opt.py (what to call, exception type, a regex the message must match),
kept in its own file for the constructors added with issue 16.
"""

import jax
import jax.numpy as jnp
import pytest

import optimizers as opt
from optimizers import schedules as S

PARAMS = {"backbone": {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}, "head": jnp.ones(2)}
GRADS = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
LABELS = {"backbone": "backbone", "head": "head"}
NAN, INF = float("nan"), float("inf")


def step(tx, grads=GRADS, params=PARAMS, state=None):
    return tx.update(grads, tx.init(params) if state is None else state, params)


def split(**transforms):
    return opt.partition(transforms or {"backbone": opt.freeze(), "head": opt.sgd(0.1)}, LABELS)


CASES = {
    # partition: its arguments
    "transforms not a dict": (lambda: opt.partition(opt.adam(), LABELS), TypeError,
                              "partition: transforms must be a non-empty dict label -> optimizer"),
    "transforms empty": (lambda: opt.partition({}, LABELS), TypeError, "non-empty dict"),
    "transforms int label": (lambda: opt.partition({0: opt.sgd(0.1)}, LABELS), TypeError,
                             "labels of transforms must be str.*got int 0"),
    "transforms uncalled constructor": (lambda: opt.partition({"head": opt.adam}, LABELS),
                                        TypeError, r"transforms\['head'\] must be an optimizer"
                                        r".*call it, e.g. adam"),
    "labels None": (lambda: opt.partition({"head": opt.sgd(0.1)}, None), TypeError,
                    "partition: labels must be a pytree of str"),
    # partition: labels that do not fit the params
    "label names no group": (lambda: step(opt.partition(
        {"backbone": opt.freeze(), "head": opt.sgd(0.1)}, {"backbone": "body", "head": "head"})),
                             ValueError, r"labels\['backbone'\] is 'body', which names no group; "
                             r"the transforms are \['backbone', 'head'\]"),
    "label not a str": (lambda: step(opt.partition({"a": opt.sgd(0.1)},
                                                   {"backbone": "a", "head": 1})),
                        TypeError, r"labels\['head'\] must be a str.*got int 1"),
    "labels not a prefix": (lambda: step(opt.partition({"a": opt.sgd(0.1)},
                                                       {"backbone": "a", "tail": "a"})),
                            ValueError, "structure of labels does not match params"),
    "label function returns an int": (lambda: step(opt.partition(
        {"a": opt.sgd(0.1)}, lambda path, leaf: leaf.ndim)), TypeError, "must be a str"),
    "packed buffer of two groups": (lambda: split().init(opt.pack(PARAMS)), ValueError,
                                    "packed buffer 'float64' holds leaves of groups.*group="),
    "partition state of another": (lambda: step(split(), state=opt.sgd(0.1).init(PARAMS)),
                                   TypeError, "partition.update: state must be the "
                                   "PartitionState"),
    "partition grads structure": (lambda: step(split(), grads={"head": jnp.ones(2)}),
                                  ValueError, "structure of grads"),
    "freeze state": (lambda: opt.freeze().update(GRADS, opt.sgd(0.1).init(PARAMS)), TypeError,
                     "freeze.update: state must be the FreezeState"),
    # group links
    "link to a missing group": (lambda: opt.hyperparams(split().init(PARAMS), "tail"),
                                ValueError, r"link='tail' does not name a link.*a partition with "
                                r"groups \['backbone', 'head'\]"),
    "group link on a chain": (lambda: opt.set_hyperparams(opt.chain(opt.clip(1.0), split()).init(
        PARAMS), "head", learning_rate=0.1), ValueError, r"is at link=\(1, 'head'\)"),
    "set in a frozen group": (lambda: opt.set_hyperparams(split().init(PARAMS), "backbone",
                                                          learning_rate=0.1),
                              TypeError, "FreezeState holds no hyperparameters"),
    # building blocks: out-of-range and non-finite numbers
    "scale_by_adam b1 1": (lambda: opt.scale_by_adam(b1=1.0), ValueError,
                           r"scale_by_adam: b1 must be in \[0, 1\); got 1.0"),
    "scale_by_adam eps_root negative": (lambda: opt.scale_by_adam(eps_root=-1e-8), ValueError,
                                        r"scale_by_adam: eps_root must be in \[0, inf\)"),
    "scale_by_adam eps_root nan": (lambda: opt.scale_by_adam(eps_root=NAN), ValueError,
                                   "eps_root"),
    "scale_by_adam moment_dtype": (lambda: opt.scale_by_adam(moment_dtype=jnp.int32), TypeError,
                                   "moment_dtype must be a floating dtype"),
    "scale_by_rms decay 1": (lambda: opt.scale_by_rms(decay=1.0), ValueError,
                             r"scale_by_rms: decay must be in \[0, 1\)"),
    "scale_by_rms flag": (lambda: opt.scale_by_rms(eps_in_sqrt="yes"), TypeError,
                          "scale_by_rms: eps_in_sqrt must be a bool"),
    "scale_by_momentum negative": (lambda: opt.scale_by_momentum(-0.1), ValueError,
                                   "scale_by_momentum: momentum must be in"),
    "scale_by_momentum nesterov int": (lambda: opt.scale_by_momentum(nesterov=1), TypeError,
                                       "nesterov must be a bool"),
    "scale_by_lion b2 1": (lambda: opt.scale_by_lion(b2=1.0), ValueError,
                           r"scale_by_lion: b2 must be in \[0, 1\)"),
    "scale inf": (lambda: opt.scale(INF), ValueError, r"scale: step_size must be in \(-inf, inf\)"),
    "scale nan": (lambda: opt.scale(NAN), ValueError, "step_size"),
    "scale str": (lambda: opt.scale("0.1"), TypeError, "scale: step_size must be a real number"),
    "scale nan schedule": (lambda: opt.scale(lambda t: jnp.nan), ValueError, "step_size.*nan"),
    "learning rate negative": (lambda: opt.scale_by_learning_rate(-0.1), ValueError,
                               r"scale_by_learning_rate: learning_rate must be in \[0, inf\)"),
    "learning rate schedule negative": (lambda: opt.scale_by_learning_rate(
        S.linear(0.1, -0.1, 10)), ValueError, "learning_rate.*at step 10"),
    "trust ratio min_norm": (lambda: opt.scale_by_trust_ratio(min_norm=-1.0), ValueError,
                             "scale_by_trust_ratio: min_norm must be in"),
    "trust ratio coefficient nan": (lambda: opt.scale_by_trust_ratio(trust_coefficient=NAN),
                                    ValueError, "trust_coefficient must be in"),
    "trust ratio without params": (lambda: opt.scale_by_trust_ratio().update(
        GRADS, opt.scale_by_trust_ratio().init(PARAMS)), ValueError,
                                   "scale_by_trust_ratio.update needs the params"),
    "trust ratio packed": (lambda: step(opt.scale_by_trust_ratio(), grads=opt.pack(GRADS),
                                        params=opt.pack(PARAMS)), ValueError,
                           "one norm per leaf.*packed buffer 'float64' holds 3 leaves"),
    "lamb weight decay negative": (lambda: opt.lamb(weight_decay=-0.1), ValueError,
                                   "add_decayed_weights: weight_decay"),
    "lamb lr nan": (lambda: opt.lamb(NAN), ValueError, "learning_rate"),
    "lion b1 nan": (lambda: opt.lion(b1=NAN), ValueError, "scale_by_lion: b1"),
    "lion mask of ints": (lambda: step(opt.lion(mask={"backbone": 1, "head": 0})), TypeError,
                          "must be a bool"),
    # ema
    "ema decay 1": (lambda: opt.ema(1.0), ValueError, r"ema: decay must be in \[0, 1\); got 1.0"),
    "ema decay negative": (lambda: opt.ema(-0.5), ValueError, "ema: decay"),
    "ema debias str": (lambda: opt.ema(0.9, debias="no"), TypeError, "ema: debias must be a bool"),
    "ema without params": (lambda: opt.ema(0.9).update(GRADS, opt.ema(0.9).init(PARAMS)),
                           ValueError, "ema.update needs the params"),
    "ema state of another": (lambda: step(opt.ema(0.9), state=opt.sgd(0.1).init(PARAMS)),
                             TypeError, "ema.update: state must be the EmaState"),
    "averaged_params without ema": (lambda: opt.averaged_params(opt.adam().init(PARAMS)),
                                    ValueError, "holds no ema state.*optimizers.ema"),
    "set ema decay 1": (lambda: opt.set_hyperparams(opt.ema(0.9).init(PARAMS), decay=1.0),
                        ValueError, r"set_hyperparams: decay must be in \[0, 1\)"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_clear_error(name):
    call, error, message = CASES[name]
    with pytest.raises(error, match=message):
        call()
