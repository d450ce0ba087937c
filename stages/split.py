"""split: stratified, grouped (patient, else duplicate group), seeded train/val/test assignment."""

from chestxray.data.splitting import split_dataset
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage("split", lambda p: split_dataset(p.split, p.validate_.near_duplicate_distance))
