"""The loss terms of the ``distill`` method, one module each, registered in ``DISTILL_TERMS`` under their YAML key
(``method.<name>: {...}``); ``base.DistillTerm`` is the contract a term implements (docs/extending.md)."""

from dasuite.methods.kd_terms.base import DISTILL_TERMS, DistillTerm, FeaturePair

__all__ = ["DISTILL_TERMS", "DistillTerm", "FeaturePair"]
