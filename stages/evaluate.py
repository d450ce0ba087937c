"""evaluate: score the trained model on the test split; metrics, predictions, plots, MLflow."""

from chestxray.config import CACHE_DIR, METRICS_DIR, MODEL_DIR, REPORTS_DIR
from chestxray.evaluation import evaluate_model
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage(
        "evaluate", lambda p: evaluate_model(MODEL_DIR, CACHE_DIR, METRICS_DIR / "evaluate.json", REPORTS_DIR / "evaluate")
    )
