"""Reproducible COVID-19 chest X-ray classification: DVC stages, Keras models, MLflow tracking."""
