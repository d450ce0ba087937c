"""params.yaml validation: every bad key fails in one line naming the key and what is allowed."""

from __future__ import annotations

import copy

import pytest
import yaml

from chestxray.config import flatten, load_params, parse_params
from chestxray.errors import UserError
from chestxray.learn.backbones import BACKBONES
from conftest import REPO, make_params

RAW = yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_are_valid(params):
    assert params.model == "cnn" and set(RAW["backbones"]) == set(BACKBONES)  # settings for every backbone
    assert params.data.source == "synthetic" and params.train.weights == "none"
    assert params.backbone == RAW["backbones"][params.model]
    assert params.flat["backbones.mobilenetv2.alpha"] == RAW["backbones"]["mobilenetv2"]["alpha"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model", "alexnet", "model must be one of " + ", ".join(BACKBONES) + ", got 'alexnet'"),
        (
            "train.imbalance",
            "smote",
            "train.imbalance must be one of none, class_weight, oversample, focal, got 'smote'",
        ),
        (
            "train.focal.alpha",
            {"COVID": 1},
            "train.focal.alpha must be 'balanced' or a weight > 0 for each class: COVID, Lung_Opacity, Normal, Viral Pneumonia, got {'COVID': 1}",
        ),
        ("train.focal.gamma", -1, "train.focal.gamma must be a number >= 0, got -1"),
        (
            "train.head.dense",
            [256, 0],
            "train.head.dense must be a list of layer widths (integers >= 1), e.g. [] or [256], got [256, 0]",
        ),
        ("train.head.dropout", 1.0, "train.head.dropout must be a fraction in [0, 1), got 1.0"),
        (
            "train.mixed_precision",
            "fp16",
            "train.mixed_precision must be one of auto, float32, mixed_float16, mixed_bfloat16, got 'fp16'",
        ),
        ("train.distribute", "tpu", "train.distribute must be one of auto, none, mirrored, got 'tpu'"),
        ("train.augment.shear", 2.0, "train.augment.shear must be a fraction in [0, 1), got 2.0"),
        ("data.source", "s3", "data.source must be one of synthetic, kaggle, local, got 's3'"),
        ("train.epochs", "ten", "train.epochs must be an integer >= 1, got 'ten'"),
        ("train.epochs", True, "train.epochs must be an integer >= 1, got True"),
        ("train.weights", "random", "train.weights must be one of imagenet, none, got 'random'"),
        ("data.image_size", 8, "data.image_size must be an integer >= 32, got 8"),
        ("split.test", 1.5, "split.test must be a fraction in (0, 1), got 1.5"),
        ("split.use_source_split", "yes", "split.use_source_split must be true or false, got 'yes'"),
        ("validate.max_reject_fraction", 1.0, "validate.max_reject_fraction must be a fraction in [0, 1), got 1.0"),
        ("validate.near_duplicate_distance", -1, "validate.near_duplicate_distance must be an integer >= 0, got -1"),
        ("validate.max_side", 32, "validate.max_side (32) is below validate.min_side (64)"),
    ],
)
def test_bad_values_name_key_and_allowed_values(key, value, message):
    with pytest.raises(UserError) as err:
        make_params(**{key: value})
    assert str(err.value) == f"params.yaml: {message}"


def test_local_source_needs_a_path():
    with pytest.raises(UserError, match=r"data.local.path is empty"):
        make_params(**{"data.source": "local"})


def test_missing_key_is_named():
    raw = copy.deepcopy(RAW)
    del raw["train"]["batch_size"]
    with pytest.raises(UserError, match=r"missing key 'train.batch_size'"):
        parse_params(raw)


def test_missing_backbone_settings_are_named():
    raw = copy.deepcopy(RAW)
    raw["model"] = "vgg19"
    del raw["backbones"]["vgg19"]
    with pytest.raises(UserError, match=r"missing key 'backbones.vgg19'"):
        parse_params(raw)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("seed: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [2], "e": "x"}


def test_focal_alpha_per_class_follows_the_task():
    cfg = make_params(**{"data.task": "binary", "train.focal.alpha": {"COVID": 3, "non-COVID": 1}}).train
    assert cfg.focal.alpha == {"COVID": 3.0, "non-COVID": 1.0}
    with pytest.raises(
        UserError, match=r"train.focal.alpha must be 'balanced' or a weight > 0 for each class: COVID, non-COVID"
    ):
        make_params(**{"data.task": "binary", "train.focal.alpha": {"COVID": 3, "Normal": 1}})
