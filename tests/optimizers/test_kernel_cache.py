"""The kernel cache (optimizers/_native.py): never load code others could have written,
never crash or give a wrong number on a damaged file.

Every case runs, in a fresh process with its own FNN_CACHE_DIR, two jitted Adam steps
of a 65,536-element float32 param (one work chunk of the kernels), and checks them
against float64 NumPy Adam written from the formula: each ends in a correct step by
the kernel, or a correct step by the XLA formulas after one clear warning. A crash
(SIGBUS on a truncated library), a hang (timeout) or a wrong number fails, and so
does a planted library's constructor running (it writes a marker file).

The tests run as root, which ignores file modes when it writes: the loader reads the
modes itself (a directory without its owner-write bit is treated as read-only), and
"another user" is made with chown to nobody (skipped when not root).
"""

import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optimizers import _native

STEP = r"""
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import jax, numpy as np
    import optimizers as opt
    rng = np.random.default_rng(0)
    p, g1, g2 = rng.normal(size=(3, 65536)).astype(np.float32)
    tx = opt.adam(1e-2)

    @jax.jit
    def step(p, state, g):
        return opt.step(tx, g, state, p)

    lowered = step.lower(p, tx.init(p), g1)
    kernel = "fnn_adam_multi_f32" in lowered.as_text()
    compiled = lowered.compile()
    new, state = compiled(p, tx.init(p), g1)
    new, state = compiled(new, state, g2)
ref, m, v = p.astype(np.float64), 0.0, 0.0  # Adam from its formula, in float64
for t, g in ((1, g1), (2, g2)):
    m = 0.9 * m + 0.1 * g.astype(np.float64)
    v = 0.999 * v + 0.001 * np.square(g.astype(np.float64))
    ref = ref - 1e-2 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
print(json.dumps({"kernel": kernel, "error": float(np.max(np.abs(np.asarray(new) - ref))),
                  "warnings": [str(w.message) for w in caught if "optimizers" in str(w.message)]}))
"""

PLANTED_SOURCE = r"""
#include <cstdio>
#include <cstdlib>
__attribute__((constructor)) static void planted() {
  if (const char* marker = std::getenv("FNN_TEST_MARKER")) {
    if (std::FILE* f = std::fopen(marker, "w")) { std::fputs("constructor ran\n", f); std::fclose(f); }
  }
}
"""


def start(cache, marker, script=STEP, **env):
    inherited = {name: value for name, value in os.environ.items() if name != "FNN_FUSED"}
    environment = {**inherited, "JAX_PLATFORMS": "cpu", "FNN_CACHE_DIR": str(cache),
                   "FNN_TEST_MARKER": str(marker), **env}
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment,
                            start_new_session=True)


def finish(process, marker):
    """The step's report, after checking: no crash, no hang, no wrong number, no constructor."""
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, (process.returncode, stderr[-3000:])
    assert not Path(marker).exists(), "a planted library's constructor ran"
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["error"] < 2e-6, report  # p ~ N(0, 1): float32 rounding is ~1e-7
    return report


def step_in(cache, tmp_path, **env):
    marker = tmp_path / "constructor-ran"
    return finish(start(cache, marker, **env), marker)


def used_kernel(report):
    assert report["kernel"] and not report["warnings"], report
    return report


def fell_back(report, *phrases):
    """The XLA formulas ran after exactly one warning that contains every phrase."""
    assert not report["kernel"], report
    assert len(report["warnings"]) == 1, report
    message = report["warnings"][0]
    for phrase in phrases:
        assert phrase in message, (phrase, message)
    return message


def libraries(directory):
    return sorted(name for name in os.listdir(directory) if name.startswith(_native.PREFIX))


def temporaries(directory):
    return sorted(name for name in os.listdir(directory) if name.startswith(".tmp-"))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def valid_library(tmp_path_factory):
    """The bytes of a good build for this machine (the suite's own cache usually has one)."""
    try:
        path = _native.ensure_built(_native.cache_dir())
    except _native.KernelsUnavailable:
        path = _native.ensure_built(tmp_path_factory.mktemp("built"))
    return path.read_bytes()


@pytest.fixture(scope="module")
def fake_compiler(tmp_path_factory, valid_library):
    """A 'compiler' that writes the good build to its -o path: a rebuild without a 3 s g++ run."""
    directory = tmp_path_factory.mktemp("compiler")
    (directory / "valid.so").write_bytes(valid_library)
    script = directory / "fake-c++"
    script.write_text(f'#!/bin/sh\nfor out; do :; done\ncp {shlex.quote(str(directory / "valid.so"))} "$out"\n')
    script.chmod(0o755)
    return str(script)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny library whose constructor writes $FNN_TEST_MARKER: it must never be loaded."""
    directory = tmp_path_factory.mktemp("planted")
    (directory / "planted.cc").write_text(PLANTED_SOURCE)
    command = _native.compiler_command()
    subprocess.run([*command, "-shared", "-fPIC", "-O0", str(directory / "planted.cc"),
                    "-o", str(directory / "planted.so")], check=True, timeout=120)
    return (directory / "planted.so").read_bytes()


def plant(directory, content, command=None, digest=None, mode=0o700):
    """Writes ``content`` under the exact name the loader looks for (its own hash unless given)."""
    key = _native.input_key(command or _native.compiler_command())
    digest = digest or hashlib.sha256(content).hexdigest()
    path = Path(directory, f"{_native.PREFIX}{key}_{digest}.so")
    path.write_bytes(content)
    path.chmod(mode)
    return path


def own_directory(path):
    path.mkdir(mode=0o700)
    return path


def nobody():
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user (chown)")
    return pwd.getpwnam("nobody").pw_uid


def test_the_planted_constructor_really_runs_when_loaded(tmp_path, planted):
    """Control: the marker appears when the planted library is loaded, so its absence means
    it was not loaded."""
    library, marker = tmp_path / "planted.so", tmp_path / "marker"
    library.write_bytes(planted)
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(library)!r})"],
                   check=True, env={**os.environ, "FNN_TEST_MARKER": str(marker)}, timeout=60)
    assert marker.exists()


# --------------------------------------------------------------------------- directories others can write


def test_a_world_writable_directory_is_refused(tmp_path, planted, valid_library):
    """Neither a planted library nor one whose hash matches is loaded from a 0777 directory."""
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    plant(cache, planted)
    plant(cache, valid_library)
    message = fell_back(step_in(cache, tmp_path), str(cache), "writable by group or others",
                        "mode 0777", f"chmod go-w {cache}", "FNN_CACHE_DIR")
    assert "symlink" not in message


def test_another_users_directory_is_refused(tmp_path, planted, valid_library):
    uid = nobody()
    cache = own_directory(tmp_path / "cache")
    plant(cache, planted)
    plant(cache, valid_library)
    os.chown(cache, uid, -1)
    fell_back(step_in(cache, tmp_path), str(cache), f"belongs to uid {uid}", "FNN_CACHE_DIR")


@pytest.mark.parametrize("target", ["world-writable", "another user's"])
def test_a_symlink_to_an_unsafe_directory_is_refused(tmp_path, planted, valid_library, target):
    real = own_directory(tmp_path / "real")
    plant(real, planted)
    plant(real, valid_library)
    if target == "world-writable":
        real.chmod(0o777)
        cause = "writable by group or others"
    else:
        os.chown(real, nobody(), -1)
        cause = "belongs to uid"
    link = tmp_path / "cache"
    link.symlink_to(real)
    fell_back(step_in(link, tmp_path), f"{real} (reached through the symlink {link})", cause,
              "FNN_CACHE_DIR")


def test_a_missing_directory_is_created_private_and_cxx_may_have_arguments(tmp_path):
    """A real build with CXX="env c++" (a command with an argument) into a new directory."""
    cache = tmp_path / "new" / "fnn"
    compiler = shutil.which("c++") or shutil.which("g++")
    used_kernel(step_in(cache, tmp_path, CXX=f"env {compiler}"))
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert len(libraries(cache)) == 1 and not temporaries(cache)


def test_cxx_is_split_like_a_shell_would(tmp_path, fake_compiler):
    """Quotes keep a path with a space whole; the words before it are the command."""
    spaced = tmp_path / "my tools" / "c++"
    spaced.parent.mkdir()
    shutil.copy(fake_compiler, spaced)
    cxx = f"env FNN_UNUSED=1 {shlex.quote(str(spaced))}"
    cache = own_directory(tmp_path / "cache")
    used_kernel(step_in(cache, tmp_path, CXX=cxx))
    assert len(libraries(cache)) == 1


# --------------------------------------------------------------------------- files that fail the checks


def divisions_made_multiplications(library: bytearray) -> bytearray:
    """The library with its AVX divisions (vdivps/ss, 2-byte VEX: C5 xx 5E) in .text turned
    into multiplications (59): still a valid ELF, loadable, and wrong (or, on a CPU without
    such code, one byte of .text changed)."""
    header = struct.unpack_from("<QHHH", library, 0x28), struct.unpack_from("<HHH", library, 0x3A)
    (section_headers, *_), (entry_size, count, names) = header
    sections = [struct.unpack_from("<I20xQQ", library, section_headers + i * entry_size)
                for i in range(count)]
    strings = sections[names][1]
    for name, offset, size in sections:
        if library[strings + name:].startswith(b".text\0"):
            text = bytes(library[offset:offset + size])
            patched = re.sub(rb"\xc5(.)\x5e", lambda m: b"\xc5" + m[1] + b"\x59", text,
                             flags=re.S)
            if patched == text:
                patched = text[:size // 2] + bytes([text[size // 2] ^ 1]) + text[size // 2 + 1:]
            library[offset:offset + size] = patched
            return library
    raise AssertionError("no .text section")


@pytest.mark.parametrize("damage", ["patched", "truncated 1000", "truncated 100000", "garbage",
                                    "empty"])
def test_a_damaged_library_is_rebuilt(tmp_path, valid_library, fake_compiler, damage):
    """Under the name of a good build: a byte changed in place (still a valid ELF), cut short
    (loading it killed every later process with SIGBUS), random bytes, or nothing."""
    cache = own_directory(tmp_path / "cache")
    path = plant(cache, valid_library, command=[fake_compiler])
    content = bytearray(valid_library)
    if damage == "patched":
        content = divisions_made_multiplications(content)
    elif damage.startswith("truncated"):
        content = content[:int(damage.split()[1])]
    elif damage == "garbage":
        content = bytearray(os.urandom(len(valid_library)))
    else:
        content = bytearray()
    path.write_bytes(bytes(content))
    used_kernel(step_in(cache, tmp_path, CXX=fake_compiler))
    assert path.read_bytes() == valid_library  # rebuilt under the same (content-hash) name
    assert libraries(cache) == [path.name] and not temporaries(cache)


@pytest.mark.parametrize("how", ["another user's file", "group-writable file", "symlink",
                                 "wrong hash"])
def test_a_planted_library_in_the_own_directory_is_not_loaded(tmp_path, planted, fake_compiler,
                                                              valid_library, how):
    """Under the exact name the loader looks for, but not the user's, writable by others,
    a link, or not hashing to its name: checked before dlopen, so the constructor never runs."""
    cache = own_directory(tmp_path / "cache")
    command = [fake_compiler]
    if how == "another user's file":
        os.chown(plant(cache, planted, command), nobody(), -1)
    elif how == "group-writable file":
        plant(cache, planted, command, mode=0o770)
    elif how == "symlink":
        elsewhere = plant(own_directory(tmp_path / "elsewhere"), planted, command)
        (cache / elsewhere.name).symlink_to(elsewhere)
    else:
        plant(cache, planted, command, digest=hashlib.sha256(valid_library).hexdigest())
    used_kernel(step_in(cache, tmp_path, CXX=fake_compiler))
    assert libraries(cache) == [f"{_native.PREFIX}{_native.input_key(command)}_"
                                f"{hashlib.sha256(valid_library).hexdigest()}.so"]


# --------------------------------------------------------------------------- builds that fail


def test_a_killed_compiler_leaves_nothing_behind(tmp_path):
    cache = own_directory(tmp_path / "cache")
    killed = tmp_path / "killed-c++"
    killed.write_text('#!/bin/sh\nfor out; do :; done\nprintf partial > "$out"\nkill -9 $$\n')
    killed.chmod(0o755)
    message = fell_back(step_in(cache, tmp_path, CXX=str(killed)),
                        "killed by signal 9 (SIGKILL)", "CXX")
    assert "printed nothing" in message
    assert os.listdir(cache) == []  # so a later run builds afresh


def test_a_process_killed_mid_build_leaves_nothing_a_later_run_trusts(tmp_path, fake_compiler):
    cache = own_directory(tmp_path / "cache")
    slow = tmp_path / "slow-c++"
    slow.write_text('#!/bin/sh\nfor out; do :; done\nprintf partial > "$out"\nexec sleep 120\n')
    slow.chmod(0o755)
    process = start(cache, tmp_path / "marker", CXX=str(slow))
    deadline = time.monotonic() + 120
    while not (temporaries(cache) and (cache / temporaries(cache)[0]).stat().st_size):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the python process and its compiler
    process.communicate()
    assert libraries(cache) == [] and len(temporaries(cache)) == 1
    used_kernel(step_in(cache, tmp_path, CXX=fake_compiler))


def test_stale_temporary_files_are_removed(tmp_path, fake_compiler):
    """Temporaries older than a build may take are removed; a live build's are not."""
    cache = own_directory(tmp_path / "cache")
    stale = [cache / ".tmp-libfnn_steps_0123_99_ab.so", cache / "tmpk2j3h4.so"]  # the old names
    live = cache / ".tmp-libfnn_steps_0123_98_cd.so"
    for path in (*stale, live):
        path.write_bytes(b"partial")
    old = time.time() - 2 * _native.STALE_AFTER
    for path in stale:
        os.utime(path, (old, old))
    used_kernel(step_in(cache, tmp_path, CXX=fake_compiler))
    assert not any(path.exists() for path in stale) and live.exists()


def test_concurrent_builds_agree(tmp_path, fake_compiler):
    cache = own_directory(tmp_path / "cache")
    markers = [tmp_path / f"marker{i}" for i in range(2)]
    processes = [start(cache, marker, CXX=fake_compiler) for marker in markers]
    for process, marker in zip(processes, markers):
        used_kernel(finish(process, marker))
    assert len(libraries(cache)) == 1 and not temporaries(cache)


def test_a_failing_compiler_shows_its_last_lines(tmp_path):
    failing = tmp_path / "failing-c++"
    failing.write_text('#!/bin/sh\nfor i in $(seq 1 30); do echo "steps.cc:$i: error: number $i" >&2; done\n'
                       "exit 1\n")
    failing.chmod(0o755)
    cache = own_directory(tmp_path / "cache")
    message = fell_back(step_in(cache, tmp_path, CXX=str(failing)), "exited with status 1",
                        "steps.cc:30: error: number 30", "CXX")
    assert "steps.cc:19:" in message and "steps.cc:18:" not in message  # the last 12 lines
    assert os.listdir(cache) == []


def test_no_compiler(tmp_path):
    cache = own_directory(tmp_path / "cache")
    missing = str(tmp_path / "no-such-c++")
    fell_back(step_in(cache, tmp_path, CXX=missing), f"no program {missing!r} found", "CXX")
    assert os.listdir(cache) == []  # (no compiler on PATH, CXX unset: tests/bad_inputs)


# --------------------------------------------------------------------------- directories that cannot be used


def test_a_read_only_directory_is_not_written(tmp_path, valid_library):
    """Mode 0500: nothing is written (root could, so the loader reads the mode); a good build
    already there is still used."""
    cache = own_directory(tmp_path / "cache")
    cache.chmod(0o500)
    fell_back(step_in(cache, tmp_path), str(cache), "read-only", "FNN_CACHE_DIR")
    assert os.listdir(cache) == []
    cache.chmod(0o700)
    plant(cache, valid_library)
    cache.chmod(0o500)
    used_kernel(step_in(cache, tmp_path))


def test_a_file_as_the_directory(tmp_path):
    """(A file as a parent of the directory: tests/bad_inputs.)"""
    file = tmp_path / "file"
    file.write_text("not a directory")
    fell_back(step_in(file, tmp_path), f"{file} is not a directory", "FNN_CACHE_DIR")
    assert file.read_text() == "not a directory"


def test_fnn_fused_0_runs_the_plain_rule_silently_and_builds_nothing(tmp_path):
    cache = tmp_path / "cache"
    report = step_in(cache, tmp_path, FNN_FUSED="0", CXX="false")
    assert not report["kernel"] and report["warnings"] == [], report
    assert not cache.exists()


LAZY = r"""
import os, sys, warnings
warnings.simplefilter("error")  # any warning fails
import jax, numpy as np
from jax import export
import optimizers as opt
tx = opt.adam(1e-2)
p = np.zeros(65536, np.float32)

def step(p, state, g):
    return opt.step(tx, g, state, p)

jax.make_jaxpr(step)(p, tx.init(p), p)  # tracing builds nothing
for platform in ("cuda", "tpu"):  # nor does lowering for another platform
    text = export.export(jax.jit(step), platforms=[platform])(p, tx.init(p), p).mlir_module()
    assert "custom_call @fnn_" not in text, platform
assert not os.path.exists(os.environ["FNN_CACHE_DIR"]), "built before a CPU lowering"
warnings.simplefilter("ignore")
jax.jit(step).lower(p, tx.init(p), p)
assert os.path.exists(os.environ["FNN_CACHE_DIR"]), "no build at the CPU lowering"
print(json.dumps({"kernel": False, "error": 0.0, "warnings": []}))
""".replace("import os,", "import json, os,")


def test_the_build_waits_for_a_cpu_lowering(tmp_path):
    """A step traced, or lowered for a GPU/TPU, neither builds nor warns about a compiler."""
    cache = tmp_path / "cache"
    marker = tmp_path / "marker"
    finish(start(cache, marker, script=LAZY, CXX=str(tmp_path / "no-such-c++")), marker)


def test_the_default_directory_follows_xdg_cache_home(tmp_path, monkeypatch):
    """FNN_CACHE_DIR wins; unset, the kernels go where fnn.data puts data sets: fnn in the
    XDG cache directory (a relative XDG_CACHE_HOME is ignored, as the spec asks)."""
    monkeypatch.delenv("FNN_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _native.cache_dir() == tmp_path / "xdg" / "fnn"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert _native.cache_dir() == tmp_path / "home" / ".cache" / "fnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _native.cache_dir() == tmp_path / "home" / ".cache" / "fnn"
    monkeypatch.setenv("FNN_CACHE_DIR", str(tmp_path / "mine"))
    assert _native.cache_dir() == tmp_path / "mine"
