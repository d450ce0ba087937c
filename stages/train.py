"""train: two-phase transfer learning of params.model on the cache; the best checkpoint to models/."""

from chestxray import stage  # first: it quiets TensorFlow's start-up lines before the step imports it
from chestxray.learn.training import train_model

if __name__ == "__main__":
    stage.run_stage("train", train_model)
