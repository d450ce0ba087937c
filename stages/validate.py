"""validate: read the layout, decode every image once, run the expectations: the clean manifest, the
rejected table, Data Docs and a validate run in MLflow."""

from chestxray.data.validation import validate_dataset
from chestxray.stage import run_stage

if __name__ == "__main__":
    run_stage("validate", lambda p: validate_dataset(p.data, p.validate_))
