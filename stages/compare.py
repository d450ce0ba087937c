"""compare: leaderboard of every MLflow run on this data version, McNemar for the top two, champion alias;
the page `dvc plots show` fills."""

from chestxray.config import Params
from chestxray.judge import plots_page
from chestxray.judge.compare import compare_runs
from chestxray.stage import run_stage


def compare(p: Params) -> None:
    compare_runs(p.compare)
    plots_page.write_page()


if __name__ == "__main__":
    run_stage("compare", compare)
