"""The multi-device session: 8 virtual CPU devices, float64 available (as in tests/conftest.py).

Run by ``tests/test_multidevice.py``; to run it by hand::

    FNN_MULTIDEVICE=1 XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        pytest -p no:xdist -o addopts="" --import-mode=importlib -q tests/multidevice

A session with another device count fails here, loudly, instead of testing less.
"""

import jax

jax.config.update("jax_enable_x64", True)

DEVICES = 8

if jax.device_count() != DEVICES:
    raise RuntimeError(
        f"tests/multidevice needs {DEVICES} devices but JAX sees {jax.device_count()} "
        f"({jax.devices()}); run it with FNN_MULTIDEVICE=1 and XLA_FLAGS=--xla_force_host_"
        f"platform_device_count={DEVICES} set before JAX starts, on the CPU backend "
        "(tests/test_multidevice.py does both).")
