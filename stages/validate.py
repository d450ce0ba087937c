"""validate: read the layout, decode every image, run the expectations; clean and rejected tables."""

from chestxray.config import MANIFEST_CSV, METRICS_DIR, RAW_DIR, REJECTED_CSV
from chestxray.stage import run_stage
from chestxray.validation import validate_dataset

if __name__ == "__main__":
    run_stage(
        "validate",
        lambda p: validate_dataset(RAW_DIR, p.data, MANIFEST_CSV, REJECTED_CSV, METRICS_DIR / "validate.json"),
    )
