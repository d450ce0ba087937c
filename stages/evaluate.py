"""evaluate: test-split metrics with CIs, operating point, plots, Grad-CAM, model card, MLflow model."""

from chestxray.config import CACHE_DIR, METRICS_DIR, MODEL_DIR, REPORTS_DIR
from chestxray.judge.evaluation import evaluate_model
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage("evaluate", lambda p: evaluate_model(p.evaluate, p.seed, MODEL_DIR, CACHE_DIR, METRICS_DIR, REPORTS_DIR))
