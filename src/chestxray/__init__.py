"""Reproducible COVID-19 chest X-ray classification: DVC stages, Keras models, MLflow tracking."""

__version__ = "0.1.0"
