"""Judging models: metrics, the operating point, evaluation, Grad-CAM, the model card and comparison."""
