"""params.yaml → typed, validated settings; every bad key or value fails here, in one line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chestxray.data.labels import CLASSES, TASKS
from chestxray.data.layouts import LAYOUTS, CsvOptions
from chestxray.data.synthetic import MIN_IMAGES
from chestxray.errors import UserError
from chestxray.learn.backbones import BACKBONES

SOURCES = ("synthetic", "kaggle", "local")
WEIGHTS = ("imagenet", "none")
IMBALANCE = ("none", "class_weight", "oversample", "focal")
MONITORS = ("val_loss", "val_accuracy")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies
DISTRIBUTE = ("auto", "none", "mirrored")
RANK_METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "weighted_f1", "roc_auc_macro")  # higher is better
MIN_BOOTSTRAP = 1000

# Where each stage reads and writes, relative to the repository root (the stages' working dir).
RAW_DIR = Path("data/raw")
DOWNLOADS_DIR = Path("data/downloads")  # Kaggle archives while they download (kept if cut, to resume)
MANIFEST_CSV = Path("data/interim/manifest.csv")
REJECTED_CSV = Path("data/interim/rejected.csv")
VALIDATION_DOCS_DIR = Path("reports/validation")  # Great Expectations Data Docs
EDA_DIR = Path("reports/eda")
SPLIT_CSV = Path("data/processed/split.csv")
CACHE_DIR = Path("data/processed/cache")
MODEL_DIR = Path("models")
METRICS_DIR = Path("metrics")
REPORTS_DIR = Path("reports")


@dataclass(frozen=True)
class DataConfig:
    source: str
    layout: str
    task: str
    label_map: dict[str, str | None]
    csv: CsvOptions
    image_size: int
    local_path: str
    kaggle_dataset: str
    synthetic_images: int


@dataclass(frozen=True)
class ValidateConfig:
    max_reject_fraction: float
    min_side: int
    max_side: int
    max_aspect: float
    min_std: float
    near_duplicate_distance: int


@dataclass(frozen=True)
class SplitConfig:
    val: float
    test: float
    use_source_split: bool


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float
    shift: float
    shear: float
    zoom: float
    contrast: float
    flip: bool


@dataclass(frozen=True)
class HeadConfig:
    """Global average pooling → batch norm → dropout → [Dense + ReLU → dropout]… → softmax."""

    dense: tuple[int, ...]
    dropout: float


@dataclass(frozen=True)
class FocalConfig:
    """Focal loss: ``gamma`` focuses on hard examples; ``alpha`` is 'balanced' (n / (k · count)
    per class, from the training split) or a weight per class name."""

    gamma: float
    alpha: str | dict[str, float]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    fine_tune_epochs: int
    fine_tune_layers: int
    fine_tune_lr_factor: float
    batch_size: int
    weights: str
    imbalance: str
    focal: FocalConfig
    monitor: str
    patience: int
    ema_momentum: float
    head: HeadConfig
    mixed_precision: str
    distribute: str
    deterministic: bool
    augment: AugmentConfig


@dataclass(frozen=True)
class EvaluateConfig:
    target_sensitivity: float
    bootstrap: int
    calibration_bins: int
    gradcam_images: int


@dataclass(frozen=True)
class CompareConfig:
    metric: str
    registered_model: str


@dataclass(frozen=True)
class Params:
    seed: int
    model: str
    data: DataConfig
    validate: ValidateConfig
    split: SplitConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    compare: CompareConfig
    backbone: dict[str, Any]  # backbones.<model>: settings of this experiment's backbone
    flat: dict[str, Any]  # every key of params.yaml, flattened with dots (for MLflow)


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate ``path``; raise UserError naming the key and the allowed values."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run from the repository root") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc.__class__.__name__}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level")
    return parse_params(raw, str(path))


def parse_params(raw: dict[str, Any], where: str = "params.yaml") -> Params:
    """Validate an already-loaded params mapping (see ``load_params``)."""
    p = _Reader(raw, where)
    model = p.choice("model", tuple(BACKBONES))
    backbone = p.get(f"backbones.{model}")
    if not isinstance(backbone, dict):
        raise UserError(f"{where}: backbones.{model} must be a mapping of settings for '{model}'")
    p.number(f"backbones.{model}.learning_rate", low=0, exclusive=True)
    source = p.choice("data.source", SOURCES)
    local_path = p.get("data.local.path", "") or ""
    if source == "local" and not str(local_path).strip():
        raise UserError(
            f"{where}: data.local.path is empty but data.source is 'local'; set it to a folder or"
            " .zip archive of the dataset (e.g. dvc exp run -S data.local.path=/path/to/archive.zip)"
        )
    data = DataConfig(
        source=source,
        layout=p.choice("data.layout", ("auto", *LAYOUTS)),
        task=p.choice("data.task", tuple(TASKS)),
        label_map=p.label_map("data.label_map"),
        csv=CsvOptions(
            metadata=p.text("data.csv.metadata"),
            file_column=p.text("data.csv.file_column"),
            label_column=p.text("data.csv.label_column"),
        ),
        image_size=p.integer("data.image_size", low=32),
        local_path=str(local_path),
        kaggle_dataset=p.text("data.kaggle.dataset"),
        synthetic_images=p.integer("data.synthetic.n_images", low=MIN_IMAGES),
    )
    validate = ValidateConfig(
        max_reject_fraction=p.fraction("validate.max_reject_fraction", allow_zero=True),
        min_side=p.integer("validate.min_side", low=1),
        max_side=p.integer("validate.max_side", low=1),
        max_aspect=p.number("validate.max_aspect", low=1),
        min_std=p.number("validate.min_std", low=0),
        near_duplicate_distance=p.integer("validate.near_duplicate_distance", low=0),
    )
    if validate.max_side < validate.min_side:
        raise UserError(
            f"{where}: validate.max_side ({validate.max_side}) is below validate.min_side ({validate.min_side})"
        )
    split = SplitConfig(
        val=p.fraction("split.val"), test=p.fraction("split.test"), use_source_split=p.boolean("split.use_source_split")
    )
    if split.val + split.test >= 1:
        raise UserError(f"{where}: split.val + split.test must be below 1, got {split.val + split.test}")
    train = TrainConfig(
        epochs=p.integer("train.epochs", low=1),
        fine_tune_epochs=p.integer("train.fine_tune_epochs", low=0),
        fine_tune_layers=p.integer("train.fine_tune_layers", low=0),
        fine_tune_lr_factor=p.number("train.fine_tune_lr_factor", low=0, exclusive=True),
        batch_size=p.integer("train.batch_size", low=1),
        weights=p.choice("train.weights", WEIGHTS),
        imbalance=p.choice("train.imbalance", IMBALANCE),
        focal=FocalConfig(
            gamma=p.number("train.focal.gamma", low=0), alpha=p.focal_alpha("train.focal.alpha", TASKS[data.task])
        ),
        monitor=p.choice("train.monitor", MONITORS),
        patience=p.integer("train.patience", low=1),
        ema_momentum=p.fraction("train.ema_momentum", allow_zero=True),
        head=HeadConfig(dense=p.units("train.head.dense"), dropout=p.fraction("train.head.dropout", allow_zero=True)),
        mixed_precision=p.choice("train.mixed_precision", PRECISIONS),
        distribute=p.choice("train.distribute", DISTRIBUTE),
        deterministic=p.boolean("train.deterministic"),
        augment=AugmentConfig(
            rotation=p.number("train.augment.rotation", low=0),
            shift=p.fraction("train.augment.shift", allow_zero=True),
            shear=p.fraction("train.augment.shear", allow_zero=True),
            zoom=p.fraction("train.augment.zoom", allow_zero=True),
            contrast=p.fraction("train.augment.contrast", allow_zero=True),
            flip=p.boolean("train.augment.flip"),
        ),
    )
    target = p.number("evaluate.target_sensitivity", low=0, exclusive=True)
    if target > 1:
        raise p.fail("evaluate.target_sensitivity", "a sensitivity in (0, 1]", target)
    evaluate = EvaluateConfig(
        target_sensitivity=target,
        bootstrap=p.integer("evaluate.bootstrap", low=MIN_BOOTSTRAP),
        calibration_bins=p.integer("evaluate.calibration_bins", low=2),
        gradcam_images=p.integer("evaluate.gradcam_images", low=1),
    )
    compare = CompareConfig(
        metric=p.choice("compare.metric", RANK_METRICS), registered_model=p.text("compare.registered_model")
    )
    return Params(
        seed=p.integer("seed", low=0),
        model=model,
        data=data,
        validate=validate,
        split=split,
        train=train,
        evaluate=evaluate,
        compare=compare,
        backbone=dict(backbone),
        flat=flatten(raw),
    )


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into ``{"a.b.c": value}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


class _Reader:
    """Reads dotted keys from a params mapping; each failure is one line naming the key."""

    _MISSING = object()

    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw, self.where = raw, where

    def get(self, key: str, default: Any = _MISSING) -> Any:
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is not self._MISSING:
                    return default
                raise UserError(f"{self.where}: missing key '{key}'; add it (see the README's params table)")
            node = node[part]
        return node

    def fail(self, key: str, expected: str, value: Any) -> UserError:
        return UserError(f"{self.where}: {key} must be {expected}, got {value!r}")

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.get(key)
        if value not in allowed:
            raise self.fail(key, "one of " + ", ".join(allowed), value)
        return value

    def integer(self, key: str, low: int) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.fail(key, f"an integer >= {low}", value)
        return value

    def number(self, key: str, low: float, exclusive: bool = False) -> float:
        value = self.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or value < low or (exclusive and value == low):
            raise self.fail(key, f"a number {'>' if exclusive else '>='} {low}", value)
        return float(value)

    def fraction(self, key: str, allow_zero: bool = False) -> float:
        value = self.number(key, low=0, exclusive=not allow_zero)
        if value >= 1:
            raise self.fail(key, f"a fraction in {'[' if allow_zero else '('}0, 1)", value)
        return value

    def boolean(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def label_map(self, key: str) -> dict[str, str | None]:
        value = self.get(key) or {}
        allowed = (*CLASSES, None)
        if not isinstance(value, dict) or any(v not in allowed for v in value.values()):
            raise self.fail(
                key, "a mapping of source label → one of " + ", ".join(CLASSES) + " (or null to leave it out)", value
            )
        return {str(k): v for k, v in value.items()}

    def units(self, key: str) -> tuple[int, ...]:
        value = self.get(key)
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
            raise self.fail(key, "a list of layer widths (integers >= 1), e.g. [] or [256]", value)
        return tuple(value)

    def focal_alpha(self, key: str, classes: tuple[str, ...]) -> str | dict[str, float]:
        value = self.get(key)
        if value == "balanced":
            return value
        weights = isinstance(value, dict) and set(value) == set(classes)
        if not weights or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in value.values()):
            raise self.fail(key, "'balanced' or a weight > 0 for each class: " + ", ".join(classes), value)
        return {c: float(value[c]) for c in classes}

    def text(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "a non-empty string", value)
        return value
