"""Tests run with 8 virtual CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``,
set by the runner ``tests/test_multidevice.py``); a session with any other count fails loudly."""

import jax


def pytest_sessionstart(session):
    count = jax.device_count()
    assert count == 8, (
        f"tests/multidevice needs 8 devices, found {count}: run it with "
        "FNN_MULTIDEVICE=1 XLA_FLAGS=--xla_force_host_platform_device_count=8")
