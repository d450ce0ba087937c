"""compare: leaderboard of every MLflow run on this data version, McNemar for the top two, champion alias;
the page `dvc plots show` fills."""

from chestxray import stage  # first: it quiets TensorFlow's start-up lines before the step imports it
from chestxray.judge.compare import compare_runs

if __name__ == "__main__":
    stage.run_stage("compare", lambda p: compare_runs(p.compare))
