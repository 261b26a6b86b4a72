"""Experiment configuration: typed schema (``schema.py``) and YAML loading with overrides (``load.py``)."""

from dasuite.config.load import dump_config, load_config, validate_config
from dasuite.config.schema import ExperimentConfig

__all__ = ["ExperimentConfig", "dump_config", "load_config", "validate_config"]
