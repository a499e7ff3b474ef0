"""A one-pass Adam kernel for large float32 leaves on the CPU, and how updates find it.

Why: XLA:CPU has no multi-output loop fusion, so the jitted Adam step becomes
three loops (new p, m, v), each re-reading the gradient: ~40 bytes of memory
traffic per param where one pass needs 28. Pure-JAX rewrites (chunked loops,
interleaved layouts, scans; see the README's performance notes) measured
slower, so this step is a small C++ kernel (``_kernels/adam.cc``) registered
with JAX's own extension mechanism, ``jax.ffi``, and updating p, m and v in
place.

How it is used: :func:`optimizers.adam` / ``adamw`` call :func:`adam_step` for
every float32 leaf of at least :data:`MIN_SIZE` elements (a packed buffer is
one such leaf). Off the CPU (``lax.platform_dependent``), under ``vmap`` and
for derivatives, the same formula runs as ordinary ``jnp`` code
(:func:`adam_reference`), so the kernel changes speed, not semantics.
``update`` returns ``p_new - p`` as the update (exact when the step is small
next to p, Sterbenz) and remembers the pair; :func:`optimizers.apply_updates`
given that update and that param returns ``p_new`` itself, so inside one jit
the subtraction and the re-add are dead code and the step is one pass.

The kernel is compiled on first use with the system C++ compiler against
``jax.ffi.include_dir()`` and cached in ``$FNN_CACHE_DIR`` (default
``~/.cache/fnn``). Without a compiler, or with ``FNN_FUSED=0``, the plain
XLA rule runs and a warning says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax import custom_batching
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

MIN_SIZE = 1 << 16  # smaller leaves: XLA's fused loops are as fast and need no custom call
TARGET = "fnn_adam_f32"
_SOURCE = Path(__file__).with_name("_kernels") / "adam.cc"
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC"]
_state: dict[str, Any] = {}


# --------------------------------------------------------------------------- building


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return platform.processor()


def _build() -> Path:
    """Compiles the kernel (once per source, jax version, compiler flags and CPU)."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    include = jax.ffi.include_dir()
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([
        source, jax.__version__.encode(), include.encode(), " ".join(_FLAGS).encode(),
        compiler.encode(), platform.machine().encode(), _cpu_signature().encode(),
    ])).hexdigest()[:16]
    cache = Path(os.environ.get("FNN_CACHE_DIR", Path.home() / ".cache" / "fnn"))
    library = cache / f"libfnn_adam_{key}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent builds (pytest-xdist) each
    # write their own file, and the rename is atomic.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *_FLAGS, f"-I{include}", str(_SOURCE), "-o", tmp],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed:\n{result.stderr[-2000:]}")
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return library


def available() -> bool:
    """Whether the CPU kernel is built and registered (builds it on the first call)."""
    if "ok" not in _state:
        if os.environ.get("FNN_FUSED", "1") == "0":
            _state["ok"] = False
            return False
        try:
            library = ctypes.cdll.LoadLibrary(str(_build()))
            jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.FnnAdamF32),
                                        platform="cpu")
            _state["library"] = library  # keep the handler's code loaded
            _state["ok"] = True
        except Exception as error:  # noqa: BLE001 - any failure means: use the XLA rule
            warnings.warn(f"optimizers: the fused CPU Adam kernel is unavailable ({error}); "
                          "Adam runs as plain XLA code (correct, ~1.6x slower on large leaves).",
                          RuntimeWarning, stacklevel=2)
            _state["ok"] = False
    return _state["ok"]


def eligible(g: Any, p: Any, *moments: Any) -> bool:
    """A leaf the kernel takes: float32 gradient, param and moments, ≥ MIN_SIZE elements."""
    arrays = (g, p, *moments)
    return (p is not None
            and all(jnp.result_type(x) == jnp.float32 for x in arrays)
            and all(jnp.shape(x) == jnp.shape(p) for x in arrays)
            and jnp.size(p) >= MIN_SIZE
            and available())


# --------------------------------------------------------------------------- the step


def adam_coefficients(count, learning_rate, b1, b2, eps, weight_decay=0.0,
                      bias_correction=True) -> jax.Array:
    """The kernel's scalars: [b1, 1 − b1, b2, 1 − b2, step, 1/√c₂, eps, decay] (float32).

    step = η / (1 − β₁ᵗ) and c₂ = 1 − β₂ᵗ with bias correction (else η and 1);
    decay = η λ.
    """
    b1, b2 = jnp.asarray(b1, jnp.float32), jnp.asarray(b2, jnp.float32)
    lr = jnp.asarray(learning_rate, jnp.float32)
    if bias_correction:
        t = count.astype(jnp.float32)
        step, inv_sqrt_c2 = lr / (1 - b1**t), jax.lax.rsqrt(1 - b2**t)
    else:
        step, inv_sqrt_c2 = lr, jnp.ones((), jnp.float32)
    decay = lr * jnp.asarray(weight_decay, jnp.float32)
    return jnp.stack([b1, 1 - b1, b2, 1 - b2, step, inv_sqrt_c2,
                      jnp.asarray(eps, jnp.float32), decay]).astype(jnp.float32)


def adam_reference(coef, g, p, m, v):
    """The kernel's formula in jnp: (p_new, m_new, v_new)."""
    b1, k1, b2, k2, step, inv_sqrt_c2, eps, decay = (coef[..., i] for i in range(8))
    m = b1 * m + k1 * g
    v = b2 * v + k2 * g * g
    return p - step * m / (jnp.sqrt(v) * inv_sqrt_c2 + eps) - decay * p, m, v


def _kernel(coef, g, p, m, v):
    out = jax.ShapeDtypeStruct(p.shape, p.dtype)
    # In place: the outputs alias p, m, v (donate them, or XLA copies them
    # first; without the aliases a donated step allocated fresh buffers, 10x slower).
    return jax.ffi.ffi_call(TARGET, (out, out, out),
                            input_output_aliases={1: 0, 2: 1, 3: 2})(g, p, m, v, coef)


# Elementwise, so on sharded arrays each device steps its own shard: without
# this rule the partitioner would gather every array onto every device.
_sharded_kernel = custom_partitioning(_kernel)


def _same_sharding(mesh, arg_shapes, result_shape):
    return (arg_shapes[2].sharding,) * 3


def _partition(mesh, arg_shapes, result_shape):
    shard = arg_shapes[2].sharding
    replicated = NamedSharding(mesh, PartitionSpec())
    return mesh, _kernel, (shard,) * 3, (replicated, shard, shard, shard, shard)


_sharded_kernel.def_partition(
    partition=_partition, infer_sharding_from_operands=_same_sharding,
    sharding_rule="c, ..., ..., ..., ... -> ..., ..., ...", need_replication_factors=("c",))


@custom_batching.custom_vmap
def _kernel_or_reference(coef, g, p, m, v):
    return tuple(jax.lax.platform_dependent(coef, g, p, m, v, cpu=_sharded_kernel,
                                            default=adam_reference))


@_kernel_or_reference.def_vmap
def _batched(axis_size, in_batched, coef, g, p, m, v):
    # Under vmap (e.g. many learning rates at once) coefficients differ per model:
    # run the jnp formula, batched, instead of the kernel.
    args = [x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
            for x, b in zip((coef, g, p, m, v), in_batched)]
    coef = args[0].reshape(axis_size, *([1] * (args[2].ndim - 1)), 8)
    return adam_reference(coef, *args[1:]), (True, True, True)


@jax.custom_jvp
def adam_step(coef, g, p, m, v):
    """One Adam step of one float32 leaf, in one pass on the CPU: (p_new, m_new, v_new)."""
    return _kernel_or_reference(coef, g, p, m, v)


@adam_step.defjvp
def _adam_step_jvp(primals, tangents):
    return jax.jvp(adam_reference, primals, tangents)


# --------------------------------------------------------------------------- apply


_stepped: dict[int, tuple[weakref.ref, weakref.ref, Any]] = {}


def remember(update: Any, param: Any, new_param: Any) -> None:
    """Records that ``param + update`` is ``new_param`` (already computed by the kernel)."""
    key = id(update)
    _stepped[key] = (weakref.ref(update), weakref.ref(param), new_param)
    weakref.finalize(update, _stepped.pop, key, None)


def recall(param: Any, update: Any) -> Any:
    """``new_param`` if ``update`` came from a fused step of exactly this ``param``, else None."""
    entry = _stepped.get(id(update))
    if entry is None or entry[0]() is not update or entry[1]() is not param:
        return None
    return entry[2]
