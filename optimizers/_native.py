"""Building, checking and loading the one-pass kernels' shared library (used by ``_multi``
and ``_sums``).

Loading a shared library runs its code (its constructors run inside ``dlopen``),
so this module loads nothing that someone else could have written, nothing that
is not exactly what was built, and checks before it loads, never after:

* The cache directory, ``$FNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fnn`` or
  ``~/.cache/fnn`` (created with mode 0700), must belong to the current user and not
  be writable by group or others, also when reached through a symlink; otherwise
  nothing there is loaded or built.
  It is opened once and every later step works through that descriptor.
* A library is named ``libfnn_steps_<inputs>_<sha256>.so``: ``<inputs>`` hashes
  what the build depends on (source, FFI headers, compiler command, flags, CPU),
  ``<sha256>`` is the file's own content hash. Before loading, the file is opened
  without following symlinks and must be a regular file of the user's, not group-
  or other-writable, whose content hashes to its name; that same open file is
  then loaded (``/proc/self/fd/N``), so nothing can be swapped in between.
* A file that fails is deleted and rebuilt: compiled to a temporary name in the
  same directory, hashed, and renamed (atomic, so concurrent builds never expose
  a partial file). Temporary files of builds that died are removed once stale.
* Whatever fails, the optimizers run the same formulas as XLA code after one
  warning naming the cause and the variable that controls it (``CXX``,
  ``FNN_CACHE_DIR``, ``FNN_FUSED``).

The build happens when a CPU program containing a kernel call is first lowered
(the CPU lowering rule of :func:`multi_kernel_call` or :func:`sums_kernel_call`), not
when a step is traced: a program lowered for a GPU or TPU never builds or warns about a
compiler.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from jax._src import core
from jax._src.interpreters import mlir as mlir_ops  # reshape in a lowering rule
from jax.extend.core import Primitive
from jax.interpreters import mlir

# custom-call target -> symbol of its handler in _kernels/steps.cc
TARGETS = {
    # the steps: one call steps a list of leaves in place (see multi_kernel_call)
    "fnn_adam_multi_f32": "FnnAdamMultiF32", "fnn_scaled_multi_f32": "FnnScaledMultiF32",
    "fnn_momentum_multi_f32": "FnnMomentumMultiF32",
    # a reduction over a list of leaves (see sums_kernel_call)
    "fnn_sums_f32": "FnnSumsF32"}
STEP_TARGETS = tuple(t for t in TARGETS if t != "fnn_sums_f32")  # the kernels that write
SOURCE = Path(__file__).with_name("_kernels") / "steps.cc"
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC"]
BUILD_TIMEOUT = 300  # seconds a compiler may run
STALE_AFTER = 2 * BUILD_TIMEOUT  # a temporary file this old belongs to no live build
PREFIX = "libfnn_steps_"
TEMPORARY_PREFIX = ".tmp-" + PREFIX
_OFF = ("0", "false", "no", "off")
_state: dict[str, Any] = {}
_lock = threading.Lock()


class KernelsUnavailable(RuntimeError):
    """Why the one-pass kernels cannot be used; the message names the cause and the fix."""


class _Rejected(Exception):
    """A cached file that must not be loaded (the message says why)."""


# --------------------------------------------------------------------------- settings


def enabled() -> bool:
    """False when ``FNN_FUSED=0`` (or false/no/off): the plain rule runs, nothing is built."""
    return os.environ.get("FNN_FUSED", "1").strip().lower() not in _OFF


def cache_dir() -> Path:
    """``$FNN_CACHE_DIR``; when it is unset or empty, ``fnn`` in the XDG cache directory:
    ``$XDG_CACHE_HOME/fnn`` or ``~/.cache/fnn`` (a relative ``$XDG_CACHE_HOME`` is ignored,
    as the XDG spec asks; the data sets' cache, ``fnn.data``, lives beside it)."""
    value = os.environ.get("FNN_CACHE_DIR", "")
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "fnn"
    try:
        return Path.home() / ".cache" / "fnn"
    except RuntimeError as error:
        raise KernelsUnavailable(f"no home directory for the kernel cache ({error}); "
                                 "set FNN_CACHE_DIR to a directory of yours") from None


def compiler_command() -> list[str]:
    """``$CXX`` split like a shell would (``"ccache g++"`` is two words), else c++ or g++."""
    value = os.environ.get("CXX", "")
    if value.strip():
        try:
            return shlex.split(value)
        except ValueError as error:
            raise KernelsUnavailable(f"CXX={value!r} cannot be split into a command ({error}); "
                                     "set CXX to a C++ compiler command, e.g. 'g++'") from None
    found = shutil.which("c++") or shutil.which("g++")
    if found is None:
        raise KernelsUnavailable("no C++ compiler found (no c++ or g++ on PATH); install one "
                                 "(e.g. g++) or set CXX to a C++ compiler command")
    return [found]


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return platform.processor()


def input_key(command: list[str]) -> str:
    """Hash of everything a build depends on: source, FFI headers, command, flags and CPU.

    The headers' contents, not their path: every virtualenv of one jax version shares a build.
    """
    headers = sorted(Path(jax.ffi.include_dir(), "xla", "ffi", "api").glob("*.h"))
    return hashlib.sha256(b"\0".join([
        SOURCE.read_bytes(), *(h.read_bytes() for h in headers), " ".join(FLAGS).encode(),
        "\0".join(command).encode(), platform.machine().encode(), _cpu_signature().encode(),
    ])).hexdigest()[:16]


# --------------------------------------------------------------------------- the directory


def _open_directory(directory: Path) -> tuple[int, bool]:
    """A descriptor of the cache directory (created 0700 if missing), checked to be only the
    user's, and whether it may be written (its owner-write bit: root ignores modes)."""
    try:
        if not os.path.lexists(directory):
            directory.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:  # made by a concurrent process: checked below like any other
                pass
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        culprit = error.filename or directory
        if isinstance(error, (NotADirectoryError, FileExistsError)):
            cause = f"{culprit} is not a directory"
        else:
            cause = f"cannot create or open {culprit} ({error.strerror})"
        raise KernelsUnavailable(f"the kernel cache directory {directory}: {cause}; set "
                                 "FNN_CACHE_DIR to a directory of yours") from None
    status = os.fstat(fd)
    real = os.path.realpath(directory)
    where = f"{real} (reached through the symlink {directory})" if real != os.path.abspath(
        directory) else str(directory)
    problem = None
    if status.st_uid != os.geteuid():
        problem = f"belongs to uid {status.st_uid}, not to you (uid {os.geteuid()})"
        fix = "set FNN_CACHE_DIR to a directory of your own"
    elif status.st_mode & 0o022:
        problem = f"is writable by group or others (mode {stat.S_IMODE(status.st_mode):04o})"
        fix = f"run `chmod go-w {real}`, or set FNN_CACHE_DIR to a directory only you can write"
    if problem is not None:
        os.close(fd)
        raise KernelsUnavailable(
            f"the kernel cache directory {where} {problem}, so a library there could have been "
            f"written by someone else and none is loaded or built; {fix}")
    return fd, bool(status.st_mode & stat.S_IWUSR)


def _remove(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _remove_stale_temporaries(dir_fd: int) -> None:
    """Deletes temporary files left by builds that were killed (older than STALE_AFTER)."""
    now = time.time()
    for name in os.listdir(dir_fd):
        # "tmp*.so": the temporary names of fnn versions before these checks.
        if name.startswith(TEMPORARY_PREFIX) or (name.startswith("tmp") and name.endswith(".so")):
            try:
                if now - os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime > STALE_AFTER:
                    os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass


# --------------------------------------------------------------------------- checking, loading


def _sha256(fd: int) -> str:
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _open_checked(dir_fd: int, name: str) -> int:
    """An open descriptor of ``name`` if it may be loaded: a regular file (not a symlink) of
    the user's, not group/other-writable, whose content hashes to its name."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError as error:
        raise _Rejected(f"cannot be opened without following links ({error.strerror})") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise _Rejected("is not a regular file")
        if status.st_uid != os.geteuid():
            raise _Rejected(f"belongs to uid {status.st_uid}, not to you")
        if status.st_mode & 0o022:
            mode = stat.S_IMODE(status.st_mode)
            raise _Rejected(f"is writable by group or others (mode {mode:04o})")
        if _sha256(fd) != name[:-len(".so")].rsplit("_", 1)[-1]:
            raise _Rejected("does not hash to the value recorded in its name (damaged or changed "
                            "since it was built)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _load(dir_fd: int, name: str) -> ctypes.CDLL:
    """Checks ``name`` and loads that very open file (no window to swap it in between)."""
    fd = _open_checked(dir_fd, name)
    try:
        for fds in ("/proc/self/fd", "/dev/fd"):
            if os.path.isdir(fds):
                return ctypes.CDLL(f"{fds}/{fd}")
        raise _Rejected("cannot be loaded by descriptor here (no /proc/self/fd or /dev/fd)")
    finally:
        os.close(fd)


def _build(dir_fd: int, directory: Path, key: str, command: list[str]) -> str:
    """Compiles the kernels to a temporary name, hashes the result and renames it to
    ``PREFIX<key>_<sha256>.so``; returns that name. Leaves nothing behind on failure."""
    shown = f"CXX={os.environ['CXX']!r}" if os.environ.get("CXX", "").strip() else command[0]
    if shutil.which(command[0]) is None:
        raise KernelsUnavailable(f"the C++ compiler {shown}: no program {command[0]!r} found; "
                                 "set CXX to a C++ compiler command, e.g. 'g++'")
    _remove_stale_temporaries(dir_fd)
    temporary = f"{TEMPORARY_PREFIX}{key}_{os.getpid()}_{secrets.token_hex(4)}.so"
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=dir_fd))
    try:
        argv = [*command, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE),
                "-o", str(directory / temporary)]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                    stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise KernelsUnavailable(f"the C++ compiler {shown} took longer than "
                                     f"{BUILD_TIMEOUT} s; set CXX to a working compiler") from None
        except OSError as error:
            raise KernelsUnavailable(f"the C++ compiler {shown} could not be started "
                                     f"({error.strerror}); set CXX to a C++ compiler command"
                                     ) from None
        if result.returncode != 0:
            raise KernelsUnavailable(_failure(shown, result))
        fd = os.open(temporary, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o700)  # whatever the umask: never group/other-writable
            if os.fstat(fd).st_size == 0:
                raise KernelsUnavailable(f"the C++ compiler {shown} succeeded but wrote an empty "
                                         "library; set CXX to a working C++ compiler")
            name = f"{PREFIX}{key}_{_sha256(fd)}.so"
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # atomic
        return name
    finally:
        _remove(dir_fd, temporary)  # gone already after the rename


def _failure(shown: str, result: subprocess.CompletedProcess) -> str:
    """What a failed compiler run says: how it ended and the last lines it printed."""
    code = result.returncode
    if code < 0:
        try:
            ended = f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            ended = f"was killed by signal {-code}"
    else:
        ended = f"exited with status {code}"
    lines = f"{result.stderr}\n{result.stdout}".strip().splitlines()[-12:]
    said = (":\n" + "\n".join("    " + line for line in lines) + "\n" if lines
            else " and printed nothing; ")
    return f"the C++ compiler {shown} {ended}{said}set CXX to a working C++ compiler command"


def _candidates(dir_fd: int, key: str) -> list[str]:
    return sorted(name for name in os.listdir(dir_fd)
                  if name.startswith(f"{PREFIX}{key}_") and name.endswith(".so"))


def ensure_built(directory: Path) -> Path:
    """The path of a checked library for this machine in ``directory``, built if needed
    (not loaded). Raises :class:`KernelsUnavailable` saying why when there can be none."""
    command = compiler_command()
    key = input_key(command)
    dir_fd, writable = _open_directory(directory)
    try:
        return directory / _find_or_build(dir_fd, directory, key, command, writable,
                                          check=_checked_name)
    finally:
        os.close(dir_fd)


def _checked_name(dir_fd: int, name: str) -> str:
    os.close(_open_checked(dir_fd, name))
    return name


def _find_or_build(dir_fd: int, directory: Path, key: str, command: list[str], writable: bool,
                   check: Callable[[int, str], Any]) -> Any:
    """``check(dir_fd, name)`` of the first cached library that passes it; a rejected one is
    deleted, and with none left a new one is built and checked."""
    for name in _candidates(dir_fd, key):
        try:
            return check(dir_fd, name)
        except (_Rejected, OSError):  # OSError: dlopen refused it
            if writable:
                _remove(dir_fd, name)
    if not writable:
        raise KernelsUnavailable(
            f"the kernel cache directory {directory} is read-only and holds no valid build of "
            "the kernels; run `chmod u+w` on it, or set FNN_CACHE_DIR to a writable directory")
    name = _build(dir_fd, directory, key, command)
    try:
        return check(dir_fd, name)
    except (_Rejected, OSError) as error:
        raise KernelsUnavailable(f"the freshly built library {directory / name} cannot be "
                                 f"loaded ({error}); if its file system forbids executing code "
                                 "(noexec), set FNN_CACHE_DIR to another directory, else set "
                                 "CXX to another C++ compiler") from None


def _load_library() -> ctypes.CDLL:
    if os.name != "posix":
        raise KernelsUnavailable("the kernels are built and checked on POSIX systems only "
                                 "(Linux, macOS)")
    command = compiler_command()
    key = input_key(command)
    directory = cache_dir()
    dir_fd, writable = _open_directory(directory)
    try:
        return _find_or_build(dir_fd, directory, key, command, writable, check=_load)
    finally:
        os.close(dir_fd)


def available() -> bool:
    """Whether the kernels are loaded and registered; the first call loads (building if
    needed) and registers them, once per process, or warns once why it cannot.

    False without a warning when ``FNN_FUSED=0``.
    """
    with _lock:
        if "ok" not in _state:
            _state["ok"] = enabled() and _register()
        return _state["ok"]


def _register() -> bool:
    try:
        library = _load_library()
        handlers = {}
        for target, symbol in TARGETS.items():
            try:
                handlers[target] = getattr(library, symbol)
            except AttributeError:
                raise KernelsUnavailable(f"the cached library has no {symbol}") from None
        for target, handler in handlers.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
        _state["library"] = library  # keep the handlers' code loaded
        return True
    except Exception as error:  # noqa: BLE001 - any failure means: use the XLA formulas
        cause = str(error) if isinstance(error, KernelsUnavailable) else (
            f"{type(error).__name__}: {error}")
        warnings.warn(f"optimizers: the fused CPU optimizer kernels are unavailable: {cause}. "
                      "Optimizers run the same formulas as plain XLA code (correct; Adam ~1.7x "
                      "slower on large leaves); FNN_FUSED=0 chooses that without this warning.",
                      RuntimeWarning, stacklevel=3)
        return False


# --------------------------------------------------------------------------- the call


def _flat(aval: core.ShapedArray) -> core.ShapedArray:
    """``aval`` as a 1-D array. A reshape of a row-major array is a bitcast, and a 1-D array
    has one layout, so flat element i is one coordinate in every operand of a kernel call."""
    return aval if aval.ndim == 1 else core.ShapedArray((aval.size,), aval.dtype)


def _flattened(ctx: Any, operands: Any, avals: Any) -> list:
    """The operands reshaped to :func:`_flat` (no op for those already 1-D)."""
    return [x if a.ndim == 1 else mlir_ops.reshape(ctx, x, _flat(a))
            for x, a in zip(operands, avals)]


def multi_kernel_call(target: str, reference: Callable, outputs: int) -> Callable:
    """``call(coef, flags, *arrays, leaves=n) -> outputs · n arrays``: one multi-tensor kernel
    call stepping ``n`` leaves in place.

    ``arrays`` are ``g_1..g_n, p_1..p_n`` and then each moment list (``outputs - 1`` of them);
    the results are ``p_1..p_n`` and the moment lists in that order, each typed like its
    leaf's ``p``. Lowered as the kernel ``target`` on the CPU (the results alias the params'
    and moments' operands: donate them, or XLA copies them first), and as
    ``reference(coef, flags, *arrays)`` on other platforms or when the kernels are
    unavailable. The kernels are built when the first CPU program with a call is lowered.
    """
    primitive = Primitive(f"{target}_step")
    primitive.multiple_results = True

    def abstract(coef, flags, *arrays, leaves):
        params = arrays[leaves:2 * leaves]
        return params * outputs

    primitive.def_abstract_eval(abstract)

    @functools.cache
    def eager(leaves):  # eager use: compiled like any jitted call, once per leaf count
        return jax.jit(functools.partial(primitive.bind, leaves=leaves))

    primitive.def_impl(lambda *operands, leaves: eager(leaves)(*operands))

    def plain(ctx, *operands, leaves):
        return mlir.lower_fun(reference, multiple_results=True)(ctx, *operands)

    def cpu(ctx, *operands, leaves):
        if not available():
            return plain(ctx, *operands, leaves=leaves)
        # Every leaf's arrays as 1-D arrays (_flat), so that the call needs no layout
        # constraints, with which XLA's layout assignment copied every aliased operand
        # (compile time grew ~n³ in the leaves).
        avals_in = [*ctx.avals_in[:2], *map(_flat, ctx.avals_in[2:])]
        avals_out = [_flat(a) for a in ctx.avals_out]
        flat_operands = [*operands[:2], *_flattened(ctx, operands[2:], ctx.avals_in[2:])]
        # Operands: coef, flags, g_1..g_n, then the params (result 0..n-1) and moments.
        aliases = {2 + leaves + i: i for i in range(outputs * leaves)}
        results = jax.ffi.ffi_lowering(target, operand_output_aliases=aliases,
                                       skip_ffi_layout_processing=True)(
            ctx.replace(avals_in=avals_in, avals_out=avals_out), *flat_operands)
        return [r if a.ndim == 1 else mlir_ops.reshape(ctx, r, a)
                for r, a in zip(results, ctx.avals_out)]

    mlir.register_lowering(primitive, plain)
    mlir.register_lowering(primitive, cpu, platform="cpu")

    def call(coef, flags, *arrays, leaves: int):
        return tuple(primitive.bind(coef, flags, *arrays, leaves=leaves))

    return call


def sums_kernel_call(target: str, reference: Callable) -> Callable:
    """``call(*leaves) -> f32[2]``: one reduction kernel call over a list of float32 leaves.

    Lowered as the kernel ``target`` on the CPU (it reads the leaves, writes nothing
    else), and as ``reference(*leaves)`` on other platforms or when the kernels are
    unavailable. The result varies over the mesh axes the leaves vary over (inside
    ``jax.shard_map``; the caller passes leaves that all vary alike).
    """
    primitive = Primitive(target)

    def abstract(*leaves):
        if not leaves:
            return core.ShapedArray((2,), jax.numpy.float32)
        first = leaves[0]  # typed like it: inside shard_map, varying over its mesh axes
        return first.update(shape=(2,), dtype=jax.numpy.dtype("float32"), weak_type=False,
                            sharding=first.sharding.update(spec=jax.sharding.PartitionSpec(None)))

    primitive.def_abstract_eval(abstract)
    primitive.def_impl(jax.jit(primitive.bind))  # eager use: compiled like any jitted call
    plain = mlir.lower_fun(reference, multiple_results=False)

    def cpu(ctx, *operands):
        if not available():
            return plain(ctx, *operands)

        return jax.ffi.ffi_lowering(target, skip_ffi_layout_processing=True)(
            ctx.replace(avals_in=[_flat(a) for a in ctx.avals_in]),
            *_flattened(ctx, operands, ctx.avals_in))

    mlir.register_lowering(primitive, plain)
    mlir.register_lowering(primitive, cpu, platform="cpu")
    return primitive.bind
