"""download: generate (synthetic), download (Kaggle) or copy (local) the dataset into data/raw/."""

from chestxray import stage  # first: it quiets TensorFlow's start-up lines before the step imports it
from chestxray.data.sources import fetch_dataset

if __name__ == "__main__":
    stage.run_stage("download", lambda p: fetch_dataset(p.data, p.seed))
