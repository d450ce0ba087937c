"""split: stratified, grouped (patient, else duplicate group), seeded train/val/test assignment."""

from chestxray import stage  # first: it quiets TensorFlow's start-up lines before the step imports it
from chestxray.data.splitting import split_dataset

if __name__ == "__main__":
    stage.run_stage("split", lambda p: split_dataset(p.split, p.validate_.near_duplicate_distance))
