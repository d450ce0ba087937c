"""audit: does the model look at the lungs, and does it hold on another source? (metrics/audit.json, model card)"""

from chestxray.judge.audit import audit_model
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage("audit", audit_model)
