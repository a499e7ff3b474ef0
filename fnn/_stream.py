"""Training from batches that are not one device array: prefetching to the device, streamed epochs.

:func:`prefetch` moves the batches of any iterable to the device in a background
thread (double buffering). :class:`StreamEpoch` is an epoch function for
``fnn.train.run_epochs`` (the one epoch loop) that trains on the batches an
iterable yields: consecutive batches of one shape are stacked into chunks of up
to ``steps_per_call`` and each chunk is one compiled ``lax.scan`` (the step of
:func:`fnn.train.make_epoch`, with the same step keys), so Python runs once per
chunk, not once per step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import sharding as _sharding
from ._step import check_state, epoch_layout, train_step_fn
from .data import _check_finite, _check_int, _num_examples

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """An iterator over the batches of ``iterable``, placed on the device ahead of use.

    A daemon thread draws batches from ``iterable``, applies ``transform`` (if
    given) and ``jax.device_put`` s them, keeping at most ``size`` ready in a
    bounded queue. An exception in the thread is re-raised by ``next`` in the
    consumer (the same exception object, with the producer's traceback).
    ``close()`` (also on ``with`` exit and garbage collection) stops the thread
    and closes the source iterator (e.g. a generator's ``finally`` runs).
    """

    def __init__(self, iterable: Iterable, size: int, sharding: Any, transform: Callable | None):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._finished = False
        # the thread holds no reference to self: an abandoned Prefetcher is collected and stops it
        self._thread = threading.Thread(
            target=_produce, args=(iter(iterable), self._queue, self._stop, _placer(sharding),
                                   transform), name="fnn-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error.with_traceback(item.error.__traceback__)
        return item

    def close(self) -> None:
        """Stops the producer thread (it finishes the batch it is on) and drops queued batches."""
        self._finished = True
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_finished", True):
            self._finished = True
            self._stop.set()


def _placer(sharding: Any) -> Callable[[Any], Any]:
    if callable(sharding) and not isinstance(sharding, jax.sharding.Sharding):
        return lambda batch: jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding(x)), batch)
    return lambda batch: jax.device_put(batch, sharding)


def _put(out: queue.Queue, stop: threading.Event, item: Any) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _produce(source: Iterator, out: queue.Queue, stop: threading.Event,
             place: Callable, transform: Callable | None) -> None:
    try:
        for batch in source:
            if stop.is_set():
                return
            if transform is not None:
                batch = transform(batch)
            if not _put(out, stop, place(batch)):
                return
        _put(out, stop, _DONE)
    except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
        _put(out, stop, _Failure(error))
    finally:
        close = getattr(source, "close", None)
        if close is not None:  # a generator's finally runs in the thread that ran it
            try:
                close()
            except Exception:  # noqa: BLE001 - closing must not hide the real outcome
                pass


def prefetch(iterable: Iterable, size: int = 2, sharding: Any = None) -> Prefetcher:
    """The batches of ``iterable``, moved to the device by a background thread ahead of use.

    While the caller's step runs on batch i, the thread ``jax.device_put`` s
    batches i+1 … i+size (double buffering with the default ``size=2``), so the
    transfer overlaps the computation. The queue is bounded: at most ``size``
    batches wait on the device. An exception raised by the iterable is raised
    again by the consumer's ``next`` with its original traceback; leaving a
    ``with`` block or calling ``close()`` early stops the thread and closes the
    source (a generator's ``finally`` runs).

    Args:
      iterable: anything iterable yielding batches (pytrees of arrays): a list,
        a generator, a ``tf.data`` dataset's ``as_numpy_iterator()``, a grain loader.
      size: batches kept ready ahead (an int >= 1).
      sharding: where to put each batch: ``None`` (the default device), a
        ``jax.sharding.Sharding`` for every leaf, or a function ``leaf -> Sharding``.

    Example:
        >>> with fnn.train.prefetch(my_batches(), size=2) as batches:
        ...     for batch in batches:
        ...         state, metrics = step(state, batch, key)
    """
    size = _check_int("prefetch", "size", size, 1)
    if isinstance(iterable, (str, bytes)) or not hasattr(iterable, "__iter__"):
        raise TypeError(f"prefetch: iterable must be iterable (a list, a generator, a data "
                        f"loader); got {type(iterable).__name__}.")
    if not (sharding is None or isinstance(sharding, jax.sharding.Sharding) or callable(sharding)):
        raise TypeError(f"prefetch: sharding must be None, a jax.sharding.Sharding or a function "
                        f"leaf -> Sharding; got {type(sharding).__name__}.")
    return Prefetcher(iterable, size, sharding, None)


# ------------------------------------------------------------------ what fit streams from


def is_stream(data: Any) -> bool:
    """True for data given as batches (a callable or an iterable other than an array or a
    tuple/list/dict, which are array data such as ``(x, y)``)."""
    if isinstance(data, (np.ndarray, jax.Array, tuple, list, dict, str, bytes)):
        return False
    return callable(data) or hasattr(data, "__iter__")


class Source:
    """The batches of each epoch: ``batches(epoch, key)`` is an iterable for that epoch.

    From host arrays (``stream=True``: the in-memory epoch's order and layout,
    gathered on the host), from a factory ``epoch -> iterable``, from a
    re-iterable (``iter`` of it every epoch), or from a one-shot iterator (one pass).
    """

    def __init__(self, owner: str, name: str, data: Any, epochs: int, batch_size: Any,
                 drop_remainder: bool, from_arrays: bool):
        self.owner, self.name, self.data = owner, name, data
        self.steps_per_epoch = None
        self.used = False
        if from_arrays:
            self.kind = "arrays"
            if batch_size is None:
                raise TypeError(f"{owner}: stream=True with array data needs batch_size.")
            self.batch_size = _check_int(owner, "batch_size", batch_size, 1)
            self.n = _num_examples(owner, data, name)
            self.drop_remainder = drop_remainder
            full, last = epoch_layout(owner, self.n, self.batch_size, drop_remainder)
            self.steps_per_epoch = full + (last > 0)
            return
        if batch_size is not None:
            raise TypeError(f"{owner}: batch_size applies to array data; {name} yields its own "
                            f"batches (got batch_size={batch_size!r}). Leave it out.")
        if callable(data):
            self.kind = "factory"
        elif iter(data) is data:
            self.kind = "iterator"
            if epochs > 1:
                raise ValueError(
                    f"{owner}: {name} is a one-shot iterator ({type(data).__name__}): it yields "
                    f"its batches once, so it trains one pass, not epochs={epochs}. Pass a "
                    f"function epoch -> iterable (e.g. lambda epoch: my_batches(epoch)) that "
                    f"makes a fresh one per epoch, or epochs=1.")
        else:
            self.kind = "iterable"

    def batches(self, epoch: int, key: jax.Array) -> Iterable:
        if self.kind == "factory":
            made = self.data(epoch)
            if isinstance(made, (str, bytes)) or not hasattr(made, "__iter__"):
                raise TypeError(f"{self.owner}: {self.name}({epoch}) must return an iterable of "
                                f"batches; got {type(made).__name__}.")
            return made
        if self.kind == "iterator":
            if self.used:
                raise ValueError(f"{self.owner}: {self.name} is a one-shot iterator and was "
                                 "used up by the first epoch.")
            self.used = True
            return self.data
        if self.kind == "iterable":
            return self.data
        return self._array_batches(key)

    def _array_batches(self, key: jax.Array) -> Iterator:
        # the order and cuts of make_epoch: permutation by the first half of split(key)
        order = np.asarray(jax.random.permutation(jax.random.split(key)[0], self.n))
        full, last = epoch_layout(self.owner, self.n, self.batch_size, self.drop_remainder)
        cuts = [(i * self.batch_size, (i + 1) * self.batch_size) for i in range(full)]
        if last:
            cuts.append((full * self.batch_size, full * self.batch_size + last))
        for start, stop in cuts:
            index = np.sort(order[start:stop])  # sorted reads (a memmap reads pages in order) …
            rank = np.argsort(np.argsort(order[start:stop]))  # … put back in the epoch's order
            yield jax.tree_util.tree_map(lambda x, i=index, r=rank: np.asarray(x[i])[r],
                                         self.data)


# ------------------------------------------------------------------ chunks of same-shape batches


def _signature(batch: Any) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(batch)
    return treedef, tuple((np.shape(x), np.result_type(x)) for x in leaves)


def _stack(batches: list) -> Any:
    def stack(*xs):
        if all(isinstance(x, np.ndarray) for x in xs):
            return np.stack(xs)
        return jnp.stack([jnp.asarray(x) for x in xs])
    return jax.tree_util.tree_map(stack, *batches)


def _pieces(count: int, size: int) -> list[int]:
    """``count`` batches cut into chunks of ``size``, the rest into powers of two (few shapes)."""
    out = [size] * (count // size)
    rest = count % size
    power = 1 << max(rest.bit_length() - 1, 0)
    while rest:
        while power > rest:
            power >>= 1
        out.append(power)
        rest -= power
    return out


def chunks(batches: Iterable, size: int, check: Callable[[int, Any], None]) -> Iterator:
    """Yields ``(number of batches, stacked chunk)``: runs of same-shape batches stacked.

    ``check(i, batch)`` runs on every batch first (in the prefetch thread).
    """
    pending: list = []
    signature = None
    for i, batch in enumerate(batches):
        check(i, batch)
        sig = _signature(batch)
        if pending and (sig != signature or len(pending) == size):
            yield from _flush(pending, size)
            pending = []
        signature = sig
        pending.append(batch)
    yield from _flush(pending, size)


def _flush(pending: list, size: int) -> Iterator:
    start = 0
    for length in _pieces(len(pending), size):
        yield _stack(pending[start:start + length])
        start += length


# ------------------------------------------------------------------ the streamed epoch


class StreamEpoch:
    """An epoch function ``(state, source, key) -> (state, metrics)`` for ``run_epochs``.

    Epochs are counted from ``first_epoch`` (the source's factory gets the
    epoch number); step i of an epoch uses the key ``fold_in(split(key)[1], i)``,
    as in :func:`fnn.train.make_epoch`. Metrics are means over the epoch's
    examples (weighted by batch size); with ``per_step`` the epoch returns
    ``(state, (means, per-step metrics))``. ``on_chunk(first_step, metrics)``
    is called after each chunk with its per-step metrics (still on the device).
    """

    def __init__(self, owner: str, loss_fn: Callable, tx: Any, *, steps_per_call: int,
                 prefetch_size: int, check: Callable, first_epoch: int, first_step: int,
                 per_step: bool, on_chunk: Callable | None, mesh: Any = None,
                 batch_axis: str = "data", placement: Any = None):
        self.owner, self.steps_per_call, self.prefetch_size = owner, steps_per_call, prefetch_size
        self.check, self.epoch, self.step = check, first_epoch, first_step
        self.per_step, self.on_chunk = per_step, on_chunk
        self.mesh, self.batch_axis = mesh, batch_axis
        step = train_step_fn(loss_fn, tx, shardings=placement)
        inner = None if mesh is None else _sharding.batch_sharding(mesh, batch_axis)

        def run_chunk(state, totals, chunk, step_key, start):
            check_state("epoch", state)
            size = jax.tree_util.tree_leaves(chunk)[0].shape[1]

            def body(state, inputs):
                i, batch = inputs
                if inner is not None:
                    batch = jax.lax.with_sharding_constraint(batch, inner)
                return step(state, batch, jax.random.fold_in(step_key, i))

            length = jax.tree_util.tree_leaves(chunk)[0].shape[0]
            state, metrics = jax.lax.scan(body, state, (start + jnp.arange(length), chunk))
            totals = {k: totals[k] + jnp.sum(v, 0).astype(totals[k].dtype) * jnp.float32(size)
                      for k, v in metrics.items()}
            return state, totals, metrics

        if mesh is None:
            self._run = jax.jit(run_chunk, donate_argnums=(0, 1))
        else:
            replicated = _sharding.replicated(mesh)
            jitted = jax.jit(run_chunk, donate_argnums=(0, 1),
                             out_shardings=(placement, replicated, replicated))

            def run(*args):
                with jax.set_mesh(mesh):
                    return jitted(*args)
            self._run = run
        self._step_fn, self._metric_shapes = step, None

    def _place(self) -> Any:
        if self.mesh is None:
            return None
        devices, mesh, axis = self.mesh.shape[self.batch_axis], self.mesh, self.batch_axis
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, axis))
        replicated = _sharding.replicated(mesh)
        # a chunk (steps, batch, ...) is split over its batch axis when the devices divide it
        return lambda x: split if np.ndim(x) >= 2 and np.shape(x)[1] % devices == 0 \
            else replicated

    def _zeros(self, state: Any, chunk: Any, step_key: jax.Array) -> dict:
        if self._metric_shapes is None:
            one = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                                         chunk)
            _, metrics = jax.eval_shape(self._step_fn, state, one, step_key)
            self._metric_shapes = {k: jnp.promote_types(v.dtype, jnp.float32)
                                   for k, v in metrics.items()}
        return {k: jnp.zeros((), d) for k, d in self._metric_shapes.items()}

    def __call__(self, state: Any, source: Source, key: jax.Array) -> tuple[Any, Any]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        step_key = jax.random.split(key)[1]
        totals, examples, index, per_step = None, 0, 0, []
        stream = chunks(source.batches(epoch, key), self.steps_per_call,
                        lambda i, batch: self.check(epoch, i, batch))
        with Prefetcher(stream, self.prefetch_size, self._place(), None) as ready:
            for chunk in ready:
                length, size = jax.tree_util.tree_leaves(chunk)[0].shape[:2]
                if totals is None:
                    totals = self._zeros(state, chunk, step_key)
                state, totals, metrics = self._run(state, totals, chunk, step_key, index)
                index, examples = index + length, examples + length * size
                if self.on_chunk is not None:
                    self.on_chunk(self.step, metrics)
                self.step += length
                if self.per_step:
                    per_step.append(metrics)
        if totals is None:
            raise ValueError(f"{self.owner}: {source.name} yielded no batches in epoch {epoch}.")
        means = {k: v / examples for k, v in totals.items()}
        if not self.per_step:
            return state, means
        return state, (means, jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *per_step))


def batch_check(owner: str, name: str, fn: Any, state: Any) -> Callable[[int, int, Any], None]:
    """The checks of a streamed batch (finite values, ``fn.check_data``), run as it is drawn."""
    check_data = getattr(fn, "check_data", None)
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype),
                                    (state.params, state.model_state))
    params = jax.eval_shape(lambda p: type(state)(p, None, None, None).unpacked_params(),
                            shapes[0]) if check_data is not None else None
    model_state = shapes[1]

    def check(epoch: int, i: int, batch: Any) -> None:
        check_batch(owner, f"{name} (epoch {epoch}, batch {i})", batch, check_data, params,
                    model_state)
    return check


def check_batch(owner: str, where: str, batch: Any, check_data: Callable | None, params: Any,
                model_state: Any) -> None:
    """One drawn batch's checks (training or evaluation): it has examples, its values are
    finite, and ``check_data`` (the loss's own check, e.g. labels in range) accepts it."""
    _num_examples(owner, batch, where)
    _check_finite(owner, where, batch)
    if check_data is not None:
        check_data(owner, where, batch, params, model_state)
