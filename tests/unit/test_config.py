"""params.yaml checks: every bad key or value fails in one line naming the key and what it takes;
names kept by a registry fail where the registry is used, with the same kind of line, and in the
check stage that runs before any other."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from chestxray import paths
from chestxray.config import flatten, load_params, parse_params
from chestxray.data import layouts
from chestxray.errors import UserError
from chestxray.judge import metrics
from chestxray.learn import backbones
from chestxray.learn.backbones import BACKBONES
from chestxray.preflight import check_params
from conftest import REPO, make_params

RAW = yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_are_valid(params):
    assert params.model == "cnn" and set(RAW["backbones"]) == set(BACKBONES)  # settings for every backbone
    assert params.data.source == "synthetic" and params.train.weights == "none"
    assert params.backbones["mobilenetv2"].constructor_args == {"alpha": RAW["backbones"]["mobilenetv2"]["alpha"]}
    assert params.backbones["cnn"].learning_rate == RAW["backbones"]["cnn"]["learning_rate"]
    assert params.validate_.min_side == RAW["validate"]["min_side"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "train.imbalance",
            "smote",
            "train.imbalance must be one of 'none', 'class_weight', 'oversample' or 'focal', got 'smote'",
        ),
        (
            "train.focal.alpha",
            {"COVID": 1},
            "train.focal.alpha must be 'balanced' or a weight > 0 for each class: COVID, Lung_Opacity, Normal,"
            " Viral Pneumonia; got {'COVID': 1.0}",
        ),
        (
            "train.focal.alpha",
            {"COVID": -1},
            "train.focal.alpha must be 'balanced' or a weight > 0 per class, got {'COVID': -1}",
        ),
        ("train.focal.gamma", -1, "train.focal.gamma must be greater than or equal to 0, got -1"),
        ("train.head.dense", [256, 0], "train.head.dense[1] must be greater than or equal to 1, got 0"),
        ("train.head.dropout", 1.0, "train.head.dropout must be less than 1, got 1.0"),
        (
            "train.mixed_precision",
            "fp16",
            "train.mixed_precision must be one of 'auto', 'float32', 'mixed_float16' or 'mixed_bfloat16', got 'fp16'",
        ),
        (
            "train.distribute",
            "tpu",
            "train.distribute must be one of 'auto', 'none', 'mirrored' or 'multiworker', got 'tpu'",
        ),
        ("train.augment.shear", 2.0, "train.augment.shear must be less than 1, got 2.0"),
        ("data.source", "s3", "data.source must be one of 'synthetic', 'kaggle' or 'local', got 's3'"),
        ("data.task", "5class", "data.task must be one of '4class', '3class' or 'binary', got '5class'"),
        (
            "data.label_map",
            {"healthy": "Healthy"},
            "data.label_map.healthy must be one of 'COVID', 'Lung_Opacity', 'Normal' or 'Viral Pneumonia',"
            " got 'Healthy'",
        ),
        ("train.epochs", "ten", "train.epochs must be a valid integer, got 'ten'"),
        ("train.epochs", True, "train.epochs must be a valid integer, got True"),  # no coercion: YAML's yes is not 1
        ("train.epochs", 0, "train.epochs must be greater than or equal to 1, got 0"),
        ("train.weights", "random", "train.weights must be one of 'imagenet' or 'none', got 'random'"),
        ("seed", "abc", "seed must be a valid integer, got 'abc'"),
        ("data.image_size", 8, "data.image_size must be greater than or equal to 32, got 8"),
        ("data.layout", "", "data.layout must have at least 1 character, got ''"),
        ("split.test", 1.5, "split.test must be less than 1, got 1.5"),
        ("split.val", 0.9, "split.val + split.test must be below 1, got 1.05"),
        ("split.use_source_split", "yes", "split.use_source_split must be a valid boolean, got 'yes'"),
        ("validate.max_reject_fraction", 1.0, "validate.max_reject_fraction must be less than 1, got 1.0"),
        (
            "validate.near_duplicate_distance",
            -1,
            "validate.near_duplicate_distance must be greater than or equal to 0, got -1",
        ),
        ("validate.max_side", 32, "validate.max_side (32) is below validate.min_side (64)"),
        ("evaluate.bootstrap", 10, "evaluate.bootstrap must be greater than or equal to 1000, got 10"),
        ("evaluate.target_sensitivity", 1.5, "evaluate.target_sensitivity must be less than or equal to 1, got 1.5"),
        ("backbones.cnn.learning_rate", 0, "backbones.cnn.learning_rate must be greater than 0, got 0"),
        # upper bounds: each of these was accepted once and failed deep inside a stage
        ("seed", 2**32, "seed must be less than 4294967296, got 4294967296"),
        ("data.image_size", 100_000, "data.image_size must be less than or equal to 1024, got 100000"),
        (
            "data.synthetic.n_images",
            10**9,
            "data.synthetic.n_images must be less than or equal to 100000, got 1000000000",
        ),
        ("data.synthetic.n_images", 39, "data.synthetic.n_images must be greater than or equal to 40, got 39"),
        ("train.batch_size", 10**9, "train.batch_size must be less than or equal to 4096, got 1000000000"),
        ("train.epochs", 10**9, "train.epochs must be less than or equal to 1000, got 1000000000"),
        ("train.fine_tune_epochs", 1001, "train.fine_tune_epochs must be less than or equal to 1000, got 1001"),
        ("train.fine_tune_lr_factor", 10, "train.fine_tune_lr_factor must be less than or equal to 1, got 10"),
        ("train.patience", 5000, "train.patience must be less than or equal to 1000, got 5000"),
        ("train.head.dense", [10**6], "train.head.dense[0] must be less than or equal to 65536, got 1000000"),
        ("train.augment.rotation", 2.0, "train.augment.rotation must be less than or equal to 1, got 2.0"),
        ("evaluate.bootstrap", 10**12, "evaluate.bootstrap must be less than or equal to 100000, got 1000000000000"),
        ("evaluate.calibration_bins", 1000, "evaluate.calibration_bins must be less than or equal to 100, got 1000"),
        ("evaluate.gradcam_images", 500, "evaluate.gradcam_images must be less than or equal to 100, got 500"),
        ("validate.max_side", 10**6, "validate.max_side must be less than or equal to 100000, got 1000000"),
        ("validate.min_std", 300, "validate.min_std must be less than or equal to 255, got 300"),
        (
            "validate.near_duplicate_distance",
            257,
            "validate.near_duplicate_distance must be less than or equal to 256, got 257",
        ),
        ("backbones.vgg19.learning_rate", 5, "backbones.vgg19.learning_rate must be less than or equal to 1, got 5"),
    ],
)
def test_bad_values_name_key_and_what_it_takes(key, value, message):
    with pytest.raises(UserError) as err:
        make_params(**{key: value})
    assert str(err.value) == f"params.yaml: {message}"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("train.epoch", "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
        ("evaluate.bootstrapp", "unknown key 'evaluate.bootstrapp'; did you mean 'evaluate.bootstrap'?"),
        ("train.augment.rotaton", "unknown key 'train.augment.rotaton'; did you mean 'train.augment.rotation'?"),
        ("trian", "unknown key 'trian'; did you mean 'train'?"),
        ("data.kaggle.token", "unknown key 'data.kaggle.token'; remove it (see docs/params.md)"),
    ],
)
def test_unknown_keys_fail_with_a_suggestion(key, message):
    raw = copy.deepcopy(RAW)
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = 30
    with pytest.raises(UserError) as err:
        parse_params(raw)
    assert str(err.value) == f"params.yaml: {message}"


def test_a_backbone_takes_its_constructor_arguments_as_they_are():
    params = make_params(**{"backbones.mobilenetv2.alpha": 0.35, "backbones.cnn.filters": [8, 16]})
    assert params.backbones["mobilenetv2"].constructor_args == {"alpha": 0.35}
    assert params.backbones["cnn"].constructor_args == {"filters": [8, 16]}


@pytest.mark.parametrize(
    ("check", "key", "value", "message"),
    [
        (
            lambda p: backbones.settings(p),
            "model",
            "alexnet",
            "model must be one of " + ", ".join(BACKBONES) + ", got 'alexnet'",
        ),
        (
            lambda p: backbones.settings(p),
            "model",
            "resnet",
            "model must be one of " + ", ".join(BACKBONES) + ", got 'resnet'; did you mean 'resnet50'?",
        ),
        (
            lambda p: layouts.get(p.data.layout),
            "data.layout",
            "folders",
            "data.layout must be one of auto, covid19-radiography, covid19-image-dataset, csv, class-folders,"
            " got 'folders'",
        ),
        (
            lambda p: metrics.get(p.compare.metric),
            "compare.metric",
            "f1",
            "compare.metric must be one of " + ", ".join(m.name for m in metrics.METRICS) + ", got 'f1'",
        ),
    ],
)
def test_registry_names_fail_where_the_registry_is_used(tmp_path, check, key, value, message):
    """config.py does not import the registries (every stage imports config.py, so adding a
    backbone, layout or metric would re-run every stage); each registry checks its own name."""
    params = make_params(**{key: value})
    with pytest.raises(UserError) as err:
        check(params)
    assert str(err.value) == f"params.yaml: {message}"
    with pytest.raises(UserError) as err:  # and the check stage asks the same registry, first
        check_params(params, tmp_path)
    assert str(err.value) == f"params.yaml: {message}" and not (tmp_path / paths.PARAMS_OK).exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "data.kaggle.dataset",
            "covid19-radiography-database",
            "data.kaggle.dataset: 'covid19-radiography-database' is not 'owner/slug' or 'owner/slug/<version>'",
        ),
        ("data.local.path", "/nowhere/dataset.zip", "data.local.path: /nowhere/dataset.zip does not exist"),
    ],
)
def test_the_check_stage_refuses_a_source_that_cannot_work(tmp_path, key, value, message):
    source = "kaggle" if key.startswith("data.kaggle") else "local"
    with pytest.raises(UserError, match=re.escape(message)):
        check_params(make_params(**{"data.source": source, key: value}), tmp_path)
    assert not (tmp_path / paths.PARAMS_OK).exists()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"source": "kaggle", "dataset": "just-a-slug"},
            "evaluate.external 'ext': dataset: 'just-a-slug' is not 'owner/slug' or 'owner/slug/<version>'",
        ),
        ({"source": "local", "path": "nowhere"}, "evaluate.external 'ext': path: {root}/nowhere does not exist"),
        (
            {"source": "local", "path": ".", "layout": "folders"},
            "params.yaml: evaluate.external 'ext': layout must be one of auto, covid19-radiography",
        ),
    ],
)
def test_the_check_stage_refuses_an_external_dataset_that_cannot_work(tmp_path, entry, message):
    """The audit stage reads evaluate.external: a bad entry stops dvc repro in check, before DVC
    deletes the audit's outputs (a relative path is relative to the repository root)."""
    params = make_params(**{"evaluate.external": [{"name": "ext", "task": "binary", **entry}]})
    with pytest.raises(UserError, match=re.escape(message.format(root=tmp_path))):
        check_params(params, tmp_path)
    assert not (tmp_path / paths.PARAMS_OK).exists()
    check_params(
        make_params(**{"evaluate.external": [{"name": "ext", "task": "binary", "source": "local", "path": "."}]}),
        tmp_path,
    )


def test_the_check_stage_writes_the_same_mark_for_any_valid_params(tmp_path):
    """Its output's hash never changes, so passing the check re-runs no other stage."""
    check_params(make_params(), tmp_path)
    mark = (tmp_path / paths.PARAMS_OK).read_bytes()
    check_params(make_params(**{"model": "vgg19", "train.epochs": 3}), tmp_path)
    assert (tmp_path / paths.PARAMS_OK).read_bytes() == mark == (REPO / paths.PARAMS_OK).read_bytes()


def test_local_source_needs_a_path():
    with pytest.raises(UserError, match=r"data.local.path is empty"):
        make_params(**{"data.source": "local"})


def test_missing_key_is_named():
    raw = copy.deepcopy(RAW)
    del raw["train"]["batch_size"]
    with pytest.raises(UserError, match=r"missing key 'train.batch_size'; add it \(see docs/params.md\)"):
        parse_params(raw)


def test_missing_backbone_settings_are_named():
    raw = copy.deepcopy(RAW)
    raw["model"] = "vgg19"
    del raw["backbones"]["vgg19"]
    with pytest.raises(UserError, match=r"missing key 'backbones.vgg19'"):
        backbones.settings(parse_params(raw))


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("seed: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_params_yaml_is_written_as_dvc_writes_it(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with DVC's own writer (ruamel, round trip): the file is
    kept in that writer's style, so an experiment's diff shows the values it set and nothing else."""
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S key=value` calls

    original = (REPO / "params.yaml").read_text()
    written = tmp_path / "params.yaml"
    written.write_text(original)
    apply_overrides(written, [f"seed={RAW['seed']}", f"model={RAW['model']}", "train.seed=null"])
    assert written.read_text() == original
    apply_overrides(written, ["model=vgg19"])
    changed = [(a, b) for a, b in zip(original.splitlines(), written.read_text().splitlines(), strict=True) if a != b]
    assert changed == [(f"model: {RAW['model']}", "model: vgg19")]


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": "x", "f": {}}) == {"a.b": 1, "a.c.d": [2], "e": "x", "f": {}}


def test_flat_gives_the_settings_under_the_keys_a_stage_reads(params):
    flat = params.flat("seed", "model", "backbones.mobilenetv2", "train.augment")
    assert flat == {
        "seed": 42,
        "model": "cnn",
        "backbones.mobilenetv2.learning_rate": 0.001,
        "backbones.mobilenetv2.alpha": 1.0,
        **{f"train.augment.{k}": v for k, v in RAW["train"]["augment"].items()},
    }


def test_focal_alpha_per_class_follows_the_task():
    cfg = make_params(**{"data.task": "binary", "train.focal.alpha": {"COVID": 3, "non-COVID": 1}}).train
    assert cfg.focal.alpha == {"COVID": 3.0, "non-COVID": 1.0}
    with pytest.raises(
        UserError, match=r"train.focal.alpha must be 'balanced' or a weight > 0 for each class: COVID, non-COVID"
    ):
        make_params(**{"data.task": "binary", "train.focal.alpha": {"COVID": 3, "Normal": 1}})
