"""evaluate: validation and test metrics with CIs, operating point, plots, Grad-CAM, MLflow model."""

from chestxray.judge.evaluation import evaluate_model
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage("evaluate", lambda p: evaluate_model(p.evaluate))
