"""kdforge: knowledge distillation for image classifiers on one fast engine."""

__version__ = "0.1.0"
