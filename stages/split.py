"""split: stratified, seeded train/val/test assignment of the clean manifest."""

from chestxray.config import MANIFEST_CSV, METRICS_DIR, SPLIT_CSV
from chestxray.splitting import split_dataset
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage(
        "split",
        lambda p: split_dataset(MANIFEST_CSV, SPLIT_CSV, METRICS_DIR / "split.json", p.split.val, p.split.test, p.seed),
    )
