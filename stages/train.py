"""train: two-phase transfer learning of params.model on the cache; best checkpoint to models/."""

from chestxray.config import CACHE_DIR, METRICS_DIR, MODEL_DIR, REPORTS_DIR
from chestxray.learn.training import train_model
from chestxray.stage import run_stage

if __name__ == "__main__":
    records = [METRICS_DIR / "download.json", METRICS_DIR / "validate.json"]
    run_stage("train", lambda p: train_model(p, CACHE_DIR, MODEL_DIR, METRICS_DIR / "train.json", REPORTS_DIR, records))
