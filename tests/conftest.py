"""Test configuration: float64 is available everywhere (references are float64).

Tests that exercise the default 32-bit mode wrap themselves in
``jax.enable_x64(False)``.

``tests/multidevice/`` needs 8 (virtual CPU) devices, while this session keeps one:
it is collected only when ``FNN_MULTIDEVICE=1``, which ``tests/test_multidevice.py``
sets when it runs that directory in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

import os

import jax

jax.config.update("jax_enable_x64", True)

# The directory itself too, so its conftest (which demands 8 devices) is not even loaded.
collect_ignore_glob = ([] if os.environ.get("FNN_MULTIDEVICE") == "1"
                       else ["multidevice", "multidevice/*"])
