"""eda: the dataset at a glance (class balance, sample grids, sizes, intensities, sex and age) from the
clean manifest, and an eda run in MLflow."""

from chestxray import stage  # first: it quiets TensorFlow's start-up lines before the step imports it
from chestxray.data.eda import explore_dataset

if __name__ == "__main__":
    stage.run_stage("eda", lambda p: explore_dataset(p.seed))
