"""Test configuration: float64 is available everywhere (references are float64).

Tests that exercise the default 32-bit mode wrap themselves in
``jax.enable_x64(False)``.
"""

import jax

jax.config.update("jax_enable_x64", True)
