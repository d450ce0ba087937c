"""compare: leaderboard of every MLflow run on this data version, McNemar for the top two, champion alias."""

from chestxray.config import METRICS_DIR, REPORTS_DIR
from chestxray.io import read_json
from chestxray.judge.compare import compare_runs
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage(
        "compare",
        lambda p: compare_runs(
            read_json(METRICS_DIR / "evaluate.json")["data_version"],
            p.compare,
            METRICS_DIR / "compare.json",
            REPORTS_DIR / "leaderboard.md",
            REPORTS_DIR / "leaderboard.png",
        ),
    )
