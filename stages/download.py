"""download: generate (synthetic), download (Kaggle) or copy (local) the dataset into data/raw/."""

from chestxray.data.sources import fetch_dataset
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage("download", lambda p: fetch_dataset(p.data, p.seed))
