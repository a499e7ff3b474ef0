"""The libraries under test, as a dict of name -> contender: adding a variant is one line.

A JAX contender builds an optax-protocol optimizer by name (``sgd``, ``momentum``,
``adagrad``, ``rmsprop``, ``adam``, ``adamw``), with the same math in every
library (where fnn's defaults differ from optax's, fnn is configured like optax:
AdaGrad with initial accumulator 0.1 and ε inside the root, RMSProp with decay
0.9 and ε inside the root). ``packed=True`` runs the step on ``opt.pack``-ed
params and gradients (fnn's fast path: one flat buffer per dtype).

A torch contender is ``torch.optim`` with ``fused=True`` or ``foreach=True``
(RMSProp has no fused CPU kernel: n/a), thread count as torch sets it.

``own_step=True`` steps with ``optimizers.step`` (the optimizer writes the params:
fnn's fast path); otherwise update + the contender's ``apply_updates`` (``p + u``).
To benchmark a new fast path, add a line to :data:`JAX_CONTENDERS`, e.g.::

    "fnn fast": JaxContender(lambda name: FNN[name](), opt.apply_updates, own_step=True),
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import optax

import optimizers as opt

LR = 1e-3
WEIGHT_DECAY = 0.01
OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw")
# bytes moved per float32 parameter by one step (read/written once each): p r/w + g r
# = 12, + one moment r/w = 20, + two moments r/w = 28.
BYTES_PER_PARAM = {"sgd": 12, "momentum": 20, "adagrad": 20, "rmsprop": 20, "adam": 28,
                   "adamw": 28}

OPTAX: dict[str, Callable[[], Any]] = {
    "sgd": lambda: optax.sgd(LR),
    "momentum": lambda: optax.sgd(LR, momentum=0.9),
    "adagrad": lambda: optax.adagrad(LR),
    "rmsprop": lambda: optax.rmsprop(LR),
    "adam": lambda: optax.adam(LR),
    "adamw": lambda: optax.adamw(LR, weight_decay=WEIGHT_DECAY),
}

FNN: dict[str, Callable[..., Any]] = {
    "sgd": lambda **kw: opt.sgd(LR, **kw),
    "momentum": lambda **kw: opt.momentum(LR, momentum=0.9, **kw),
    "adagrad": lambda **kw: opt.adagrad(LR, initial_accumulator=0.1, eps_in_sqrt=True, **kw),
    "rmsprop": lambda **kw: opt.rmsprop(LR, decay=0.9, eps_in_sqrt=True, **kw),
    "adam": lambda **kw: opt.adam(LR, **kw),
    "adamw": lambda **kw: opt.adamw(LR, weight_decay=WEIGHT_DECAY, **kw),
}


@dataclass(frozen=True)
class JaxContender:
    """An optax-protocol library: ``make(name) -> tx``, its ``apply_updates``, packing."""

    make: Callable[[str], Any]
    apply_updates: Callable[[Any, Any], Any]
    packed: bool = False
    own_step: bool = False  # step with optimizers.step (the write owned by the optimizer)
    noop: bool = False  # return params and state unchanged: the cost of the call alone

    def prepare(self, tree: Any) -> Any:
        """The params (or gradients) as this contender's step takes them."""
        return opt.pack(tree) if self.packed else tree

    def unprepare(self, params: Any) -> Any:
        """The params tree back from :meth:`prepare`'s form."""
        return opt.unpack(params) if self.packed else params

    def step_fn(self, name: str) -> tuple[Callable, Any]:
        """A fresh ``step(params, state, grads) -> (params, state)`` and its tx."""
        tx = self.make(name)
        apply_updates = self.apply_updates
        if self.noop:
            return (lambda params, state, grads: (params, state)), tx
        if self.own_step:
            return (lambda params, state, grads: opt.step(tx, grads, state, params)), tx

        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return apply_updates(params, updates), state

        return step, tx

    def step_runner(self, name: str, leaves: Sequence[np.ndarray], grads: Sequence[np.ndarray],
                    donate: bool = True) -> Callable[[int], None]:
        """``run(n)``: n jitted steps on these leaves, outputs threaded back in."""
        step, tx = self.step_fn(name)
        params = self.prepare(list(map(jax.numpy.array, leaves)))
        g = self.prepare(list(map(jax.numpy.array, grads)))
        state = tx.init(params)
        jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
        carry = [params, state]

        def run(n: int) -> None:
            p, s = carry
            for _ in range(n):
                p, s = jitted(p, s, g)
            jax.block_until_ready((p, s))
            carry[:] = [p, s]

        return run


@dataclass(frozen=True)
class TorchContender:
    """``torch.optim`` with one implementation flag (``fused`` or ``foreach``)."""

    flag: str

    def step_runner(self, name: str, leaves: Sequence[np.ndarray], grads: Sequence[np.ndarray],
                    donate: bool = True) -> Callable[[int], None] | None:
        """``run(n)``: n ``optimizer.step()`` calls, or None if torch lacks this variant."""
        import torch

        if not donate:
            return None
        params = [torch.tensor(np.asarray(x), requires_grad=True) for x in leaves]
        for p, g in zip(params, grads):
            p.grad = torch.tensor(np.asarray(g))
        make = {
            "sgd": lambda ps, **kw: torch.optim.SGD(ps, lr=LR, **kw),
            "momentum": lambda ps, **kw: torch.optim.SGD(ps, lr=LR, momentum=0.9, **kw),
            "adagrad": lambda ps, **kw: torch.optim.Adagrad(ps, lr=LR, **kw),
            "rmsprop": lambda ps, **kw: torch.optim.RMSprop(ps, lr=LR, alpha=0.9, **kw),
            "adam": lambda ps, **kw: torch.optim.Adam(ps, lr=LR, **kw),
            "adamw": lambda ps, **kw: torch.optim.AdamW(ps, lr=LR, weight_decay=WEIGHT_DECAY,
                                                        **kw),
        }[name]
        try:
            optimizer = make(params, **{self.flag: True})
            optimizer.step()
        except (TypeError, RuntimeError):  # e.g. RMSprop has no fused kernel
            return None

        def run(n: int) -> None:
            for _ in range(n):
                optimizer.step()

        return run


def torch_available() -> bool:
    """Whether torch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


JAX_CONTENDERS: dict[str, JaxContender] = {
    "optax": JaxContender(lambda name: OPTAX[name](), optax.apply_updates),
    # what users get: optimizers.step on the plain params tree (fnn.train's step)
    "fnn step": JaxContender(lambda name: FNN[name](), opt.apply_updates, own_step=True),
    # the p + u path of Flax TrainState / nnx.Optimizer / eqx.apply_updates
    "fnn p+u": JaxContender(lambda name: FNN[name](), optax.apply_updates),
    "fnn packed": JaxContender(lambda name: FNN[name](), opt.apply_updates, packed=True,
                               own_step=True),
    # the same step under skip_nonfinite (its finiteness test is one more read of the grads)
    "fnn skip": JaxContender(lambda name: opt.skip_nonfinite(FNN[name]()), opt.apply_updates,
                             own_step=True),
    # a jitted, donated step that returns params and optax's state unchanged: what passing
    # the buffers in and out costs, the floor of every plain-tree contender
    "no-op": JaxContender(lambda name: OPTAX[name](), optax.apply_updates, noop=True),
}

TORCH_CONTENDERS: dict[str, TorchContender] = (
    {"torch fused": TorchContender("fused"), "torch foreach": TorchContender("foreach")}
    if torch_available() else {}
)

BASELINE = "optax"


def check_numerics(names: Sequence[str], contenders: dict[str, JaxContender],
                   steps: int = 3, rtol: float = 1e-5) -> list[str]:
    """Runs each optimizer a few steps on a small tree in every JAX contender.

    Returns one message per contender whose params differ from the baseline's
    (so the timed computations are known to be the same math).
    """
    rng = np.random.default_rng(0)
    leaves = [rng.standard_normal(s).astype(np.float32) for s in [(7, 5), (5,), (3, 4, 2)]]
    grads = [rng.standard_normal(x.shape).astype(np.float32) for x in leaves]
    problems = []
    for name in names:
        results = {}
        for cname, c in contenders.items():
            if c.noop:
                continue
            step, tx = c.step_fn(name)
            params = c.prepare([jax.numpy.array(x) for x in leaves])
            g = c.prepare([jax.numpy.array(x) for x in grads])
            state = tx.init(params)
            for _ in range(steps):
                params, state = jax.jit(step)(params, state, g)
            results[cname] = [np.asarray(x) for x in c.unprepare(params)]
        ref = results.get(BASELINE)
        for cname, got in results.items():
            if ref is None or cname == BASELINE:
                continue
            worst = max(float(np.max(np.abs(a - b) / (np.abs(b) + 1e-6))) for a, b in zip(got, ref))
            if worst > rtol:
                problems.append(f"{name}: {cname} differs from {BASELINE} "
                                f"(max relative difference {worst:.1e} after {steps} steps)")
    return problems
