"""Runs tests/multidevice in its own pytest session with 8 virtual CPU devices.

JAX fixes its device count when the backend starts, and the rest of the suite
keeps one device; so the multi-device tests run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and ``FNN_MULTIDEVICE=1``
(without which tests/conftest.py does not collect them). This test fails with
that session's output if any test there fails, or if none ran.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 8


def multidevice_environment() -> dict:
    env = dict(os.environ, FNN_MULTIDEVICE="1", JAX_PLATFORMS="cpu")
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={DEVICES}"])
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def test_multidevice_session():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider",
         "-o", "addopts=", "--import-mode=importlib", "-q", "-rfE", "tests/multidevice"],
        cwd=ROOT, env=multidevice_environment(), capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=1800)
    output = f"{result.stdout}\n{result.stderr}"
    # exit code 5: nothing collected, which must not pass as success
    assert result.returncode == 0, (
        f"the 8-device session (pytest tests/multidevice) exited with {result.returncode}:\n"
        + output[-20000:])
    assert " passed" in result.stdout, output[-5000:]
