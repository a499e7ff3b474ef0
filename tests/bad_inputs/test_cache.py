"""Bad CXX / FNN_CACHE_DIR / FNN_FUSED settings for the kernel cache (optimizers/_native.py).

Each unusable setting raises KernelsUnavailable naming the variable to change (the
optimizers turn that into one warning and run XLA code); nothing here compiles.
"""

import os
import pwd

import pytest

from optimizers import _native


def _file(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    return tmp_path / "file"


def _mode(mode):
    def make(tmp_path):
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache").chmod(mode)
        return tmp_path / "cache"
    return make


def _nobodys(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user (chown)")
    (tmp_path / "cache").mkdir(mode=0o700)
    os.chown(tmp_path / "cache", pwd.getpwnam("nobody").pw_uid, -1)
    return tmp_path / "cache"


def _link_to(make):
    def link(tmp_path):
        (tmp_path / "link").symlink_to(make(tmp_path))
        return tmp_path / "link"
    return link


def _dangling(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "missing")
    return tmp_path / "link"


BAD_DIRECTORIES = {
    "a file": (_file, "is not a directory"),
    "under a file": (lambda tmp_path: _file(tmp_path) / "fnn", "is not a directory"),
    "world-writable": (_mode(0o777), "writable by group or others (mode 0777)"),
    "group-writable": (_mode(0o770), "writable by group or others (mode 0770)"),
    "other-writable": (_mode(0o702), "writable by group or others (mode 0702)"),
    "sticky world-writable": (_mode(0o1777), "writable by group or others"),
    "another user's": (_nobodys, "belongs to uid"),
    "a symlink to a world-writable one": (_link_to(_mode(0o777)), "reached through the symlink"),
    "a symlink to another user's": (_link_to(_nobodys), "reached through the symlink"),
    "a dangling symlink": (_dangling, "cannot create or open"),
    "read-only and empty": (_mode(0o500), "read-only"),
}


@pytest.mark.parametrize("name", BAD_DIRECTORIES)
def test_an_unusable_cache_directory_names_fnn_cache_dir(tmp_path, monkeypatch, name):
    make, cause = BAD_DIRECTORIES[name]
    directory = make(tmp_path)
    monkeypatch.setenv("CXX", "false")  # never reached: the directory is refused first
    before = sorted(os.listdir(directory)) if directory.is_dir() else None
    with pytest.raises(_native.KernelsUnavailable, match="FNN_CACHE_DIR") as caught:
        _native.ensure_built(directory)
    assert cause in str(caught.value), str(caught.value)
    assert (sorted(os.listdir(directory)) if directory.is_dir() else None) == before


BAD_COMPILERS = [
    ('"g++', "cannot be split"),
    ("g++ 'unclosed", "cannot be split"),
    ("/no/such/c++", "no program '/no/such/c++' found"),
    ("env-no-such-program g++", "no program 'env-no-such-program' found"),
    ("false", "exited with status 1 and printed nothing"),
    ("sh -c 'echo broken header >&2; exit 3'", "exited with status 3:\n    broken header"),
    ("sh -c 'kill -9 $$'", "killed by signal 9 (SIGKILL)"),
    ("true", "succeeded but wrote an empty library"),
]


@pytest.mark.parametrize("cxx, cause", BAD_COMPILERS)
def test_an_unusable_compiler_names_cxx(tmp_path, monkeypatch, cxx, cause):
    monkeypatch.setenv("CXX", cxx)
    directory = tmp_path / "cache"
    with pytest.raises(_native.KernelsUnavailable, match="CXX") as caught:
        _native.ensure_built(directory)
    assert cause in str(caught.value), str(caught.value)
    assert not directory.exists() or os.listdir(directory) == []  # nothing left to trust


def test_no_compiler_on_path_names_cxx(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(_native.KernelsUnavailable, match="no C.. compiler found.*CXX"):
        _native.compiler_command()


@pytest.mark.parametrize("cxx, command", [
    ("env g++", ["env", "g++"]),
    ("ccache  g++ ", ["ccache", "g++"]),
    ("'/opt/my tools/c++' -fno-lto", ["/opt/my tools/c++", "-fno-lto"]),
    ("/usr/bin/c++", ["/usr/bin/c++"]),
])
def test_cxx_is_split_like_a_shell(monkeypatch, cxx, command):
    monkeypatch.setenv("CXX", cxx)
    assert _native.compiler_command() == command


@pytest.mark.parametrize("value, on", [("0", False), ("false", False), ("OFF", False),
                                       ("no", False), ("1", True), ("", True), ("yes", True)])
def test_fnn_fused(monkeypatch, value, on):
    monkeypatch.setenv("FNN_FUSED", value)
    assert _native.enabled() is on


def test_an_empty_fnn_cache_dir_means_the_default(monkeypatch):
    monkeypatch.setenv("FNN_CACHE_DIR", "")
    monkeypatch.setenv("HOME", "/home/someone")
    assert _native.cache_dir() == _native.Path("/home/someone/.cache/fnn")
    monkeypatch.setenv("FNN_CACHE_DIR", "~/elsewhere")
    assert _native.cache_dir() == _native.Path("/home/someone/elsewhere")
