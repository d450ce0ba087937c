"""validate: read the layout, decode every image once, run the expectations; clean and rejected
tables, Data Docs, EDA, and a validate run in MLflow."""

from chestxray.config import RAW_DIR
from chestxray.data.validation import validate_dataset
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage("validate", lambda p: validate_dataset(RAW_DIR, p.data, p.validate, p.seed))
