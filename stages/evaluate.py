"""evaluate: validation and test metrics with CIs, operating point, plots, Grad-CAM, MLflow model."""

from chestxray import stage  # first: it quiets TensorFlow's start-up lines before the step imports it
from chestxray.judge.evaluation import evaluate_model

if __name__ == "__main__":
    stage.run_stage("evaluate", lambda p: evaluate_model(p.evaluate))
