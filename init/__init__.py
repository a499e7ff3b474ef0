"""Initializers: (key, shape, dtype) -> array."""
