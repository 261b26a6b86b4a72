"""Training methods: each is one module registered under its YAML ``method.name`` (``dasuite.registry``: the names
are known without importing the modules; docs/extending.md shows how to add one)."""

from dasuite.methods.base import METHODS, LossTerm, Method

__all__ = ["METHODS", "LossTerm", "Method"]
