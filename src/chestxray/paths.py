"""Where the stages read and write, relative to the repository root (the stages' working directory).

dvc.yaml reads this file too (``vars:``), so a path is written once. DVC takes only literal
strings from it: keep every entry a plain ``NAME = "path"`` line.
"""

PARAMS_OK = "data/params.ok"  # written by the check stage once params.yaml passed; every stage depends on it
RAW_DIR = "data/raw"  # the dataset as its source ships it
DOWNLOADS_DIR = "data/downloads"  # Kaggle archives while they download (kept if cut, to resume)
MANIFEST_CSV = "data/interim/manifest.csv"  # the clean images, one row each, with what one decode measured
REJECTED_CSV = "data/interim/rejected.csv"  # the rejected files and why
SPLIT_CSV = "data/processed/split.csv"  # path, label, split, group; its hash is the data version
CACHE_DIR = "data/processed/cache"  # uint8 images per split at data.image_size
EXTERNAL_DIR = "data/external"  # evaluate.external datasets as downloaded or extracted, one folder per name
MODEL_DIR = "models"  # the best checkpoint (model.keras) and run.json

# Each stage's full record, read by the stages after it (not DVC metrics: see chestxray.records) ...
DOWNLOAD_JSON = "reports/download.json"
VALIDATE_JSON = "reports/validate.json"
SPLIT_JSON = "reports/split.json"
TRAIN_JSON = "reports/train.json"
EVALUATE_JSON = "reports/evaluate.json"
AUDIT_JSON = "reports/audit.json"
COMPARE_JSON = "reports/compare.json"
# ... and its headline, the DVC metrics: the few numbers dvc exp show compares across experiments
DOWNLOAD_METRICS = "metrics/download.json"
VALIDATE_METRICS = "metrics/validate.json"
SPLIT_METRICS = "metrics/split.json"
TRAIN_METRICS = "metrics/train.json"
EVALUATE_METRICS = "metrics/evaluate.json"
AUDIT_METRICS = "metrics/audit.json"
COMPARE_METRICS = "metrics/compare.json"

VALIDATION_DOCS_DIR = "reports/validation"  # Great Expectations Data Docs
EDA_DIR = "reports/eda"
HISTORY_CSV = "reports/train/history.csv"  # one row per epoch (Keras CSVLogger)
CURVES_PNG = "reports/train/curves.png"
EVALUATE_DIR = "reports/evaluate"  # predictions, curves and plots of the test split
PREDICTIONS_CSV = "reports/evaluate/predictions.csv"
RELIABILITY_CSV = "reports/evaluate/reliability.csv"
ROC_DIR = "reports/evaluate/roc"  # one CSV per class
PR_DIR = "reports/evaluate/pr"  # one CSV per class
CONFUSION_PNG = "reports/evaluate/confusion.png"
ROC_PNG = "reports/evaluate/roc.png"
PR_PNG = "reports/evaluate/pr.png"
RELIABILITY_PNG = "reports/evaluate/reliability.png"
GRADCAM_DIR = "reports/gradcam"
AUDIT_DIR = "reports/audit"  # the shortcut audit's tables and plots
MODEL_CARD_MD = "reports/model_card.md"
LEADERBOARD_MD = "reports/leaderboard.md"
LEADERBOARD_PNG = "reports/leaderboard.png"
PLOTS_TEMPLATE_HTML = "reports/plots_template.html"  # the page dvc plots fill (.dvc/config plots.html_template)
