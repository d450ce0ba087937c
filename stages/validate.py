"""validate: read the layout, decode every image once, run the expectations: the clean manifest, the
rejected table, Data Docs and a validate run in MLflow."""

from chestxray import stage  # first: it quiets TensorFlow's start-up lines before the step imports it
from chestxray.data.validation import validate_dataset

if __name__ == "__main__":
    stage.run_stage("validate", lambda p: validate_dataset(p.data, p.validate_))
