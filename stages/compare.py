"""compare: leaderboard of every MLflow run on this data version, McNemar for the top two, champion alias."""

from chestxray.judge.compare import compare_runs
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage("compare", lambda p: compare_runs(p.compare))
