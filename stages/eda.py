"""eda: the dataset at a glance (class balance, sample grids, sizes, intensities, sex and age) from the
clean manifest, and an eda run in MLflow."""

from chestxray.data.eda import explore_dataset
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage("eda", lambda p: explore_dataset(p.seed))
