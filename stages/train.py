"""train: two-phase transfer learning of params.model on the cache; the best checkpoint to models/."""

from chestxray.learn.training import train_model
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage("train", train_model)
