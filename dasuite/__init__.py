"""dasuite: semantic segmentation under scarce target labels (DA, SSL, KD) on one Accelerate engine."""

__version__ = "0.1.0"
