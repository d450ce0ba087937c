"""check: every param of params.yaml checked before any stage runs (and deletes its outputs)."""

from chestxray import stage  # first: it quiets TensorFlow's start-up lines before the step imports it
from chestxray.preflight import check_params

if __name__ == "__main__":
    stage.run_stage("check", check_params)
