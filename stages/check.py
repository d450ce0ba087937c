"""check: every param of params.yaml checked before any stage runs (and deletes its outputs)."""

from chestxray.preflight import check_params
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage("check", check_params)
