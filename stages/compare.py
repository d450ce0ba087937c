"""compare: leaderboard of every MLflow run on this data version, McNemar for the top two, champion alias;
the page `dvc plots show` fills."""

from chestxray import stage  # first: it quiets TensorFlow's start-up lines before the step imports it
from chestxray.config import Params
from chestxray.judge import plots_page
from chestxray.judge.compare import compare_runs


def compare(p: Params) -> None:
    compare_runs(p.compare)
    plots_page.write_page()


if __name__ == "__main__":
    stage.run_stage("compare", compare)
