"""params.yaml → typed settings. A wrong type, a value out of range or an unknown key fails here, in
one line naming the key (with a suggestion for a misspelt one).

Names kept by a registry are checked by that registry where they are used: ``model`` by
``learn.backbones``, ``data.layout`` by ``data.layouts``, ``compare.metric`` by ``judge.metrics``.
Every stage imports this module, so adding a backbone, a layout or a metric must not change it.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chestxray.errors import UserError
from chestxray.tasks import CLASSES, TASKS

HELP = "see docs/params.md"
SHOULD = re.compile(r"^\w+ should")  # pydantic's "Input should be …", "String should have …"
Fraction = Annotated[float, Field(ge=0, lt=1)]  # [0, 1)
OpenFraction = Annotated[float, Field(gt=0, lt=1)]  # (0, 1)
Pixels = Annotated[int, Field(ge=1, le=100_000)]  # an image side
Text = Annotated[str, Field(min_length=1)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # NumPy's and TensorFlow's seed range
SEEDED = ("split", "train", "evaluate")  # sections with a seed of their own (null: the top-level seed)


class Section(BaseModel):
    """A mapping of params.yaml: typed, no unknown keys, no coercion ("3" is not 3), read-only."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CsvOptions(Section):
    """How to read a ``csv`` layout: which table, which columns."""

    metadata: Text = "auto"  # its path inside the dataset; auto = the one *.csv that names images
    file_column: Text = "auto"  # auto = filename | imagename | file_name | file | path | image
    label_column: Text = "finding"


class LocalSettings(Section):
    path: str


class KaggleSettings(Section):
    dataset: Text


class SyntheticSettings(Section):
    n_images: Annotated[int, Field(ge=40, le=100_000)]  # the generator needs 10 of each class


class DataSettings(Section):
    source: Literal["synthetic", "kaggle", "local"]
    layout: Text
    task: Literal[tuple(TASKS)]
    label_map: dict[str, Literal[CLASSES] | None]
    csv: CsvOptions
    image_size: Annotated[int, Field(ge=32, le=1024)]
    occlude: Fraction  # side of the central square blacked out in every image (the lungs-removed audit); 0 = off
    local: LocalSettings
    kaggle: KaggleSettings
    synthetic: SyntheticSettings

    @model_validator(mode="after")
    def _local_needs_a_path(self) -> DataSettings:
        if self.source == "local" and not self.local.path.strip():
            raise ValueError(
                "data.local.path is empty but data.source is 'local'; set it to a folder or .zip archive of the"
                " dataset (e.g. dvc exp run -S data.local.path=/path/to/archive.zip)"
            )
        return self


class ValidateSettings(Section):
    max_reject_fraction: Fraction
    min_side: Pixels
    max_side: Pixels
    max_aspect: Annotated[float, Field(ge=1, le=100)]
    min_std: Annotated[float, Field(ge=0, le=255)]
    near_duplicate_distance: Annotated[int, Field(ge=0, le=256)]  # of a 256-bit hash

    @model_validator(mode="after")
    def _sides_in_order(self) -> ValidateSettings:
        if self.max_side < self.min_side:
            raise ValueError(f"validate.max_side ({self.max_side}) is below validate.min_side ({self.min_side})")
        return self


class SplitSettings(Section):
    seed: Seed  # which images go to val and test: the data version
    val: OpenFraction
    test: OpenFraction
    use_source_split: bool

    @model_validator(mode="after")
    def _room_for_train(self) -> SplitSettings:
        if self.val + self.test >= 1:
            raise ValueError(f"split.val + split.test must be below 1, got {self.val + self.test}")
        return self


class FocalSettings(Section):
    """Focal loss: ``gamma`` focuses on hard examples; ``alpha`` is 'balanced' (n / (k · count) per
    class, from the training split) or a weight per class name (checked against the task in ``Params``)."""

    gamma: Annotated[float, Field(ge=0, le=10)]
    alpha: Any

    @field_validator("alpha")
    @classmethod
    def _balanced_or_weights(cls, alpha: Any) -> str | dict[str, float]:
        if alpha == "balanced":
            return alpha
        numbers = isinstance(alpha, dict) and all(
            isinstance(w, int | float) and not isinstance(w, bool) and w > 0 for w in alpha.values()
        )
        if not numbers:
            raise ValueError(f"train.focal.alpha must be 'balanced' or a weight > 0 per class, got {alpha!r}")
        return {str(c): float(w) for c, w in alpha.items()}


class HeadSettings(Section):
    """Global average pooling → batch norm → dropout → [Dense + ReLU → dropout]… → softmax."""

    dense: Annotated[list[Annotated[int, Field(ge=1, le=65_536)]], Field(max_length=10)]
    dropout: Fraction


class AugmentSettings(Section):
    rotation: Annotated[float, Field(ge=0, le=1)]
    shift: Fraction
    shear: Fraction
    zoom: Fraction
    contrast: Fraction
    flip: bool


class TrainSettings(Section):
    seed: Seed  # weights' initialisation, shuffling, augmentation: not the data
    epochs: Annotated[int, Field(ge=1, le=1000)]
    fine_tune_epochs: Annotated[int, Field(ge=0, le=1000)]
    fine_tune_layers: Annotated[int, Field(ge=0, le=10_000)]
    fine_tune_lr_factor: Annotated[float, Field(gt=0, le=1)]  # phase 2 runs at a lower rate
    batch_size: Annotated[int, Field(ge=1, le=4096)]
    weights: Literal["imagenet", "none"]
    imbalance: Literal["none", "class_weight", "oversample", "focal"]
    focal: FocalSettings
    monitor: Literal["val_loss", "val_accuracy", "val_macro_f1"]
    patience: Annotated[int, Field(ge=1, le=1000)]
    ema_momentum: Fraction
    head: HeadSettings
    mixed_precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]  # Keras dtype policies
    distribute: Literal["auto", "none", "mirrored", "multiworker"]  # multiworker: TF_CONFIG, learn/cluster.py
    deterministic: bool
    augment: AugmentSettings


class ExternalDataset(Section):
    """One ``evaluate.external`` entry: a dataset the trained model is scored on, never trained on.
    ``source`` local reads ``path`` (a folder or .zip), kaggle downloads ``dataset`` (owner/slug[/version]);
    ``layout``, ``task``, ``label_map`` and ``csv`` read it as the ``data.*`` keys of the same names do."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", max_length=64)]  # the metrics' key
    source: Literal["local", "kaggle"]
    path: str = ""
    dataset: str = ""
    layout: Text = "auto"
    task: Literal[tuple(TASKS)]
    label_map: dict[str, Literal[CLASSES] | None] = {}
    csv: CsvOptions = CsvOptions()

    @property
    def key(self) -> str:
        """How messages name the entry: ``evaluate.external '<name>'``."""
        return f"evaluate.external '{self.name}'"

    @model_validator(mode="after")
    def _where_from(self) -> ExternalDataset:
        needed = {"local": ("path", self.path), "kaggle": ("dataset", self.dataset)}[self.source]
        if not needed[1].strip():
            raise ValueError(
                f"{self.key}: source is {self.source} but {needed[0]} is empty; set it"
                f" ({'a folder or .zip' if self.source == 'local' else 'owner/slug'})"
            )
        return self


class EvaluateSettings(Section):
    seed: Seed  # the bootstrap resamples
    target_sensitivity: Annotated[float, Field(gt=0, le=1)]
    threshold_rule: Literal["lower_bound", "point"]
    bootstrap: Annotated[int, Field(ge=1000, le=100_000)]
    calibration_bins: Annotated[int, Field(ge=2, le=100)]
    gradcam_images: Annotated[int, Field(ge=1, le=100)]
    external: list[ExternalDataset]  # scored by the audit stage

    @field_validator("external")
    @classmethod
    def _unique_names(cls, external: list[ExternalDataset]) -> list[ExternalDataset]:
        names = [e.name for e in external]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"evaluate.external: the name {twice[0]!r} is used twice; give each dataset its own name")
        return external


class AuditSettings(Section):
    occlude: OpenFraction  # test-time occlusion: side of the central box removed, or kept alone
    near_duplicate_distance: Annotated[int, Field(ge=0, le=256)]  # leakage audit; at least validate's
    min_source_images: Annotated[int, Field(ge=1, le=1_000_000)]  # per-source metrics need this many test images


class CompareSettings(Section):
    metric: Text
    min_delta: Annotated[float, Field(ge=0, le=1)]  # on validation: how much better a challenger must be
    registered_model: Text


class BackboneSettings(Section):
    """``backbones.<name>``: the learning rate, and any argument of the backbone's constructor."""

    model_config = ConfigDict(extra="allow")
    learning_rate: Annotated[float, Field(gt=0, le=1)]

    @property
    def constructor_args(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Params(Section):
    seed: Seed  # the synthetic data, the EDA grids, and every section seed left null
    model: Text
    data: DataSettings
    validate_: ValidateSettings = Field(alias="validate")  # `validate` is a BaseModel method
    split: SplitSettings
    train: TrainSettings
    evaluate: EvaluateSettings
    compare: CompareSettings
    audit: AuditSettings
    backbones: dict[str, BackboneSettings]

    model_config = ConfigDict(populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _section_seeds_default_to_seed(cls, raw: Any) -> Any:
        """``split.seed``, ``train.seed`` and ``evaluate.seed`` left null take the top-level ``seed``."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        for name in SEEDED:
            section = raw.get(name)
            if isinstance(section, dict) and section.get("seed", ...) is None:
                raw[name] = {**section, "seed": raw.get("seed")}
        return raw

    @model_validator(mode="after")
    def _alpha_per_class(self) -> Params:
        alpha, classes = self.train.focal.alpha, TASKS[self.data.task]
        if isinstance(alpha, dict) and set(alpha) != set(classes):
            raise ValueError(
                f"train.focal.alpha must be 'balanced' or a weight > 0 for each class: {', '.join(classes)};"
                f" got {alpha}"
            )
        return self

    @model_validator(mode="after")
    def _audit_looser_than_split(self) -> Params:
        audit, split = self.audit.near_duplicate_distance, self.validate_.near_duplicate_distance
        if audit < split:
            raise ValueError(
                f"audit.near_duplicate_distance ({audit}) is below validate.near_duplicate_distance ({split}):"
                " the leakage audit must look further than the split's grouping; raise it"
            )
        return self

    def flat(self, *keys: str) -> dict[str, Any]:
        """The settings under the dotted ``keys`` (e.g. ``"train"``, ``"backbones.cnn"``), flattened
        with dots: what a stage that reads those keys logs as its params."""
        tree = self.model_dump(by_alias=True)
        out: dict[str, Any] = {}
        for key in keys:
            node: Any = tree
            for part in key.split("."):
                node = node[part]
            out.update(flatten({key: node}))
        return out


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and check ``path``; raise UserError naming the key and what it takes."""
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
    """Check an already-loaded params mapping (see ``load_params``)."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{where}: {_describe(exc.errors()[0])}") from None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into ``{"a.b.c": value}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _describe(error: dict[str, Any]) -> str:
    """One pydantic error as one line: the dotted key, what it must be, what it got."""
    loc = [str(part) for part in error["loc"] if not isinstance(part, int)]
    key = ".".join(loc) + "".join(f"[{part}]" for part in error["loc"] if isinstance(part, int))
    kind, message = error["type"], error["msg"]
    if kind == "missing":
        return f"missing key '{key}'; add it ({HELP})"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], _siblings(loc[:-1]), n=1)
        hint = f"did you mean '{'.'.join([*loc[:-1], close[0]])}'?" if close else f"remove it ({HELP})"
        return f"unknown key '{key}'; {hint}"
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    if kind == "literal_error":
        message = f"must be one of {error['ctx']['expected']}"
    return f"{key} {SHOULD.sub('must', message)}, got {error['input']!r}"


def _siblings(loc: list[str]) -> list[str]:
    """The keys a mapping at ``loc`` may hold (its model's field names), for suggestions."""
    model: Any = Params
    for part in loc:
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        if part not in fields:  # inside a dict of sections, e.g. backbones.<name>
            return []
        model = fields[part].annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return [f.alias or name for name, f in model.model_fields.items()]
