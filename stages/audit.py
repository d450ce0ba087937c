"""audit: does the model look at the lungs, and does it hold on another source? (reports/audit.json, model card)"""

from chestxray import stage  # first: it quiets TensorFlow's start-up lines before the step imports it
from chestxray.judge.audit import audit_model

if __name__ == "__main__":
    stage.run_stage("audit", audit_model)
