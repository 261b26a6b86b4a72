"""Training methods: each is a small module registered under its YAML ``method.name``."""

from dasuite.methods.base import METHODS, Method
from dasuite.methods import adaptsegnet, cyclegan, distill, mean_teacher, source_only  # noqa: F401  (register themselves)

__all__ = ["METHODS", "Method"]
