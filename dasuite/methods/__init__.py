"""Training methods: each is a small module registered under its YAML ``method.name``."""

from dasuite.methods.base import METHODS, Method
from dasuite.methods import source_only  # noqa: F401  (registers itself)

__all__ = ["METHODS", "Method"]
