"""The compare stage and ``promote`` on a real SQLite MLflow store, real registry and real artifacts:
ranking on validation, McNemar's test on test (reported only), seed groups, the champion alias and
its rule, compare.json, the Markdown leaderboard and its chart."""

from __future__ import annotations

import logging
import shutil
import statistics
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from chestxray import paths, tracking
from chestxray.__main__ import main
from chestxray.config import CompareSettings
from chestxray.errors import UserError
from chestxray.io import read_json, write_json
from chestxray.judge import leaderboard, metrics
from chestxray.judge.compare import compare_runs, mcnemar, promote
from conftest import REPO, png_size

NAME = "chestxray"
CLASSES = ("COVID", "Normal")


class FixedProbabilities(mlflow.pyfunc.PythonModel):
    """A trivial servable model: the same COVID probability for every input."""

    def predict(self, context, model_input: list[str], params=None) -> list[float]:
        return [0.5] * len(model_input)


def predictions(correct: list[bool], actual_flip: int | None = None) -> pd.DataFrame:
    """Test predictions on images p00, p01, …: each right or wrong as ``correct`` says."""
    actual = [CLASSES[i % 2] for i in range(len(correct))]
    if actual_flip is not None:
        actual[actual_flip] = CLASSES[1 - actual_flip % 2]
    predicted = [a if ok else CLASSES[1 - CLASSES.index(a)] for a, ok in zip(actual, correct, strict=True)]
    paths = [f"p{i:02d}.png" for i in range(len(correct))]
    return pd.DataFrame({"path": paths, "actual": actual, "predicted": predicted, "p_COVID": 0.5, "p_Normal": 0.5})


def scores(f1: float, accuracy: float = 0.5) -> dict:
    """One split's metrics as evaluate logs them (a few of the registry's, macro-F1 with its CI)."""
    return {
        "macro_f1": f1,
        "accuracy": accuracy,
        "roc_auc_macro": 0.95,
        "ece": 0.04,
        "covid_sensitivity": 0.9,
        "covid_specificity": 0.8,
        "ci": {"macro_f1": {"low": f1 - 0.055, "high": f1 + 0.047}},
    }


OPERATING_POINT = {
    "threshold": 0.31,
    "sensitivity": 0.93,
    "specificity": 0.77,
    "ci": {"sensitivity": {"low": 0.85, "high": 0.98}, "specificity": {"low": 0.7, "high": 0.83}},
}


def log_run(
    model: str,
    version: str,
    val: float | None,
    test: float | None = None,
    *,
    accuracy: float = 0.5,
    seed: int = 42,
    epochs: int = 3,
    servable: bool = False,
    preds: pd.DataFrame | None = None,
    tmp_path: Path | None = None,
    occlude: float = 0.0,
) -> str:
    """A trained run as train logs it (``occlude`` > 0: a border-only audit run); scored on validation
    (``val.*``) and on test (``test.*``, with the operating point) as evaluate logs them, where given;
    with a pyfunc ``model`` and an ``evaluate/predictions.csv`` when asked."""
    with tracking.run(tracking.run_tags(model, version, image_size=64, occlude=occlude)) as run_id:
        train = {"weights": "none", "imbalance": "class_weight", "epochs": epochs, "seed": seed}
        tracking.log_params({"seed": 42, "model": model, "train": train, "resolved": {"replicas": 1}})
        tracking.log_data_records({"download": {"source": "kaggle", "slug": "owner/radiography"}})
        tracking.log_metrics({"epochs_run": 3, "params": 1234, "train_seconds": 12.5, "model_mb": 4.2}, prefix="train.")
        if val is not None or test is not None:
            tracking.set_tags({"evaluate.bootstrap": 1000, "evaluate.seed": 42})
        if val is not None:
            tracking.log_metrics(scores(val, accuracy), prefix="val.")
        if test is not None:
            tracking.log_metrics({**scores(test, accuracy), "operating_point": OPERATING_POINT}, prefix="test.")
        if preds is not None:
            folder = tmp_path / run_id / "evaluate"
            folder.mkdir(parents=True)
            preds.to_csv(folder / "predictions.csv", index=False)
            tracking.log_artifacts(folder, "evaluate")
        if servable:
            mlflow.pyfunc.log_model(name="model", python_model=FixedProbabilities(), pip_requirements=[])
    return run_id


def settings(metric: str = "macro_f1", min_delta: float = 0.01) -> CompareSettings:
    return CompareSettings(metric=metric, min_delta=min_delta, registered_model=NAME)


def run_compare(tmp_path: Path, version: str = "v1", metric: str = "macro_f1", min_delta: float = 0.01) -> dict:
    """The compare stage after an evaluation on ``version``, with ``tmp_path`` as the repository."""
    write_json(tmp_path / paths.EVALUATE_JSON, {"data_version": version})
    return compare_runs(settings(metric, min_delta), tmp_path)


def champion() -> tuple[int, str]:
    """(version, run_id) behind chestxray@champion, read back from the registry."""
    found = MlflowClient(tracking.tracking_uri()).get_model_version_by_alias(NAME, "champion")
    return int(found.version), found.run_id


def n_versions() -> int:
    return len(MlflowClient(tracking.tracking_uri()).search_model_versions(f"name = '{NAME}'"))


def set_metrics(run_id: str, values: dict, prefix: str) -> None:
    """Log ``values`` again on an existing run (as a re-evaluation would)."""
    with tracking.run(run_id=run_id):
        tracking.log_metrics(values, prefix=prefix)


# Ranking


def test_compare_ranks_on_validation_and_shows_test_beside_it(mlflow_store, tmp_path, caplog):
    a = log_run("cnn", "v1", 0.61, 0.90, accuracy=0.9)  # best on test, worst on validation
    b = log_run("vgg19", "v1", 0.82, 0.70, accuracy=0.7)
    log_run("resnet50", "v1", None)  # trained, never evaluated
    old = log_run("mobilenetv2", "v1", None, 0.99)  # evaluated before validation was scored
    log_run("mobilenetv2", "v2", 0.99, 0.99)  # other data
    with caplog.at_level(logging.WARNING, logger="chestxray.judge.compare"):
        summary = run_compare(tmp_path)
    assert summary["n_runs"] == 2 and summary["ranked_on"] == "validation" and summary["min_delta"] == 0.01
    assert [r["run_id"] for r in summary["leaderboard"]] == [b, a]
    assert summary["unranked"] == [{"run_id": old, "run_name": tracking.get_run(old)["run_name"]}]
    row = summary["leaderboard"][0]
    assert summary["best"] == {
        "run_id": b,
        "run_name": row["run_name"],
        "model": "vgg19",
        "val.macro_f1": 0.82,
        "test.macro_f1": 0.70,
    }
    assert (row["val.macro_f1.low"], row["val.macro_f1.high"]) == (pytest.approx(0.765), pytest.approx(0.867))
    assert (row["test.macro_f1.low"], row["test.macro_f1.high"]) == (pytest.approx(0.645), pytest.approx(0.747))
    assert (row["test.operating_point.threshold"], row["test.operating_point.sensitivity"]) == (0.31, 0.93)
    assert (row["test.operating_point.specificity.low"], row["test.operating_point.specificity.high"]) == (0.7, 0.83)
    assert (row["epochs"], row["params"], row["model_mb"], row["seed"], row["weights"], row["image_size"]) == (
        3,
        1234,
        4.2,
        42,
        "none",
        "64",
    )
    assert row["test.accuracy.low"] is None and row["val.balanced_accuracy"] is None
    # no logged model: nothing registered, no champion; no predictions: no McNemar
    assert summary["champion"] is None and summary["mcnemar"] is None and n_versions() == 0
    assert f"the best run {b} logged no model 'model'" in caplog.text
    assert f"no McNemar test for {row['run_name']} ({b})" in caplog.text
    assert read_json(tmp_path / paths.COMPARE_JSON) == summary
    board = (tmp_path / paths.LEADERBOARD_MD).read_text()
    assert "ranked by validation macro_f1" in board and "they never rank a run nor move the champion" in board
    assert "Not listed: 1 run(s) evaluated before validation was scored" in board and "No champion yet." in board
    header = next(line for line in board.splitlines() if line.startswith("| Champion"))
    assert "| Rank (validation macro_f1) |" in header and "| Validation Macro F1 [95 % CI] |" in header
    assert "| Macro F1 (test) [95 % CI] |" in header and "| COVID sens. @ threshold (test) [95 % CI] |" in header
    assert "| COVID sens. argmax (test)" in header
    line = [line for line in board.splitlines() if line.startswith("| ")][1]
    assert "vgg19" in line and "| 0.820 [0.765, 0.867] |" in line and "| 0.700 [0.645, 0.747] |" in line
    assert "| 0.930 [0.850, 0.980] |" in line and "| 0.310 |" in line
    assert "★" not in board
    png_size(tmp_path / paths.LEADERBOARD_PNG)


def test_ranking_by_another_metric_changes_the_order(mlflow_store):
    a = log_run("cnn", "v1", 0.61, 0.99, accuracy=0.9)
    b = log_run("vgg19", "v1", 0.82, 0.10, accuracy=0.7)
    c = log_run("resnet50", "v1", 0.82, 0.50, accuracy=0.7)  # ties: the earlier run first
    runs = tracking.runs_for("v1")
    ranked = {
        name: [r["run_id"] for r in leaderboard.rows(runs, metrics.get(name))] for name in ("macro_f1", "accuracy")
    }
    assert ranked == {"macro_f1": [b, c, a], "accuracy": [a, b, c]}
    assert leaderboard.rows(runs, metrics.get("roc_auc_macro"))[0]["val.roc_auc_macro"] == 0.95
    assert leaderboard.rows(runs, metrics.get("weighted_f1")) == []  # never logged: no run is ranked


def test_a_lower_is_better_metric_ranks_and_crowns_the_lowest(mlflow_store, tmp_path):
    """compare.metric may be any metric of the registry; ece and log_loss are better when lower."""
    high = log_run("cnn", "v1", 0.9, 0.9, servable=True)
    set_metrics(high, {"ece": 0.10}, "val.")
    low = log_run("vgg19", "v1", 0.5, 0.5, servable=True)  # ece 0.04 (log_run's)
    summary = run_compare(tmp_path, metric="ece")
    assert [r["run_id"] for r in summary["leaderboard"]] == [low, high]
    assert summary["champion"]["run_id"] == low and summary["champion"]["validation"] == 0.04
    set_metrics(high, {"ece": 0.035}, "val.")  # better, but by less than min_delta
    kept = run_compare(tmp_path, metric="ece")["champion"]
    assert kept["run_id"] == low and kept["moved"] is False and champion()[1] == low
    set_metrics(high, {"ece": 0.01}, "val.")  # better by 0.03
    moved = run_compare(tmp_path, metric="ece")["champion"]
    assert moved["run_id"] == high and moved["reason"].endswith(
        "validation ece 0.0100 vs 0.0400, better by +0.0300 ≥ compare.min_delta 0.01"
    )
    set_metrics(low, {"log_loss": 0.3}, "val.")  # a metric that is not a leaderboard column ranks all the same
    set_metrics(high, {"log_loss": 0.2}, "val.")
    assert [r["run_id"] for r in run_compare(tmp_path, metric="log_loss")["leaderboard"]] == [high, low]


def test_compare_with_no_evaluated_run(mlflow_store, tmp_path):
    summary = run_compare(tmp_path, "none-yet")
    assert summary == {
        "data_version": "none-yet",
        "metric": "macro_f1",
        "ranked_on": "validation",
        "min_delta": 0.01,
        "n_runs": 0,
        "best": None,
        "champion": None,
        "unranked": [],
        "audit_runs": [],
        "mcnemar": None,
        "seed_groups": [],
        "leaderboard": [],
    }
    assert "_No runs yet._" in (tmp_path / paths.LEADERBOARD_MD).read_text()
    png_size(tmp_path / paths.LEADERBOARD_PNG)


# McNemar


def test_mcnemar_counts_discordant_images_and_gives_the_exact_p_value():
    # 20 shared images: 7 only the first gets right, 1 only the second, 10 both, 2 neither
    first = [True] * 7 + [False] + [True] * 10 + [False] * 2
    second = [False] * 7 + [True] + [True] * 10 + [False] * 2
    result = mcnemar(predictions(first), predictions(second).iloc[::-1])  # joined on path, not row order
    assert result == {
        "n": 20,
        "a_only_correct": 7,
        "b_only_correct": 1,
        "p_value": pytest.approx(0.0703125),
        "significant": False,
    }
    # 2 · Σ_{i ≤ 1} C(8, i) / 2^8 = 2 · 9 / 256
    assert result["p_value"] == pytest.approx(2 * 9 / 256, abs=1e-12)


def test_mcnemar_significant_when_only_one_model_is_ever_right_alone():
    result = mcnemar(predictions([True] * 12), predictions([False] * 10 + [True] * 2))
    assert result == {
        "n": 12,
        "a_only_correct": 10,
        "b_only_correct": 0,
        "p_value": pytest.approx(2 / 1024),
        "significant": True,
    }


def test_mcnemar_with_no_discordant_image_is_p_one():
    assert mcnemar(predictions([True, False]), predictions([True, False]))["p_value"] == 1.0


def test_mcnemar_refuses_different_images_or_labels():
    base = predictions([True] * 20)
    other_paths = base.assign(path=[f"q{i:02d}.png" for i in range(20)])
    assert mcnemar(base, other_paths) is None
    assert mcnemar(base, base.iloc[:19]) is None
    assert mcnemar(base, predictions([True] * 20, actual_flip=3)) is None
    assert mcnemar(pd.concat([base, base.iloc[:1]]), pd.concat([base, base.iloc[:1]])) is None  # a path twice


# Champion alias


def test_champion_moves_only_for_a_validation_gain_of_at_least_min_delta(mlflow_store, tmp_path):
    a = log_run("cnn", "v1", 0.80, 0.80, servable=True)
    first = run_compare(tmp_path)["champion"]
    assert first["moved"] is True and (first["version"], first["run_id"]) == (1, a) and champion() == (1, a)
    assert "no champion yet" in first["reason"]

    again = run_compare(tmp_path)["champion"]  # nothing new: no new version, the alias stays
    assert again["moved"] is False and n_versions() == 1 and champion() == (1, a)

    log_run("vgg19", "v1", 0.805, 0.99, servable=True)  # better by 0.005 < 0.01 (and far better on test)
    small = run_compare(tmp_path)["champion"]
    assert small["moved"] is False and champion() == (1, a) and n_versions() == 2
    assert "better by +0.0050, which is not a positive gain of at least compare.min_delta 0.01" in small["reason"]

    c = log_run("resnet50", "v1", 0.81, 0.60, servable=True)  # better by exactly 0.01 (worse on test)
    better = run_compare(tmp_path)["champion"]
    assert better == {
        "name": NAME,
        "version": 3,
        "run_id": c,
        "run_name": better["run_name"],
        "model": "resnet50",
        "data_version": "v1",
        "validation": 0.81,
        "test": 0.6,
        "moved": True,
        "reason": f"v3 (run {c}) beats champion v1 (run {a}): validation macro_f1 0.8100 vs 0.8000, better by"
        " +0.0100 ≥ compare.min_delta 0.01",
    }
    assert champion() == (3, c)


def test_min_delta_zero_still_needs_a_strict_gain(mlflow_store, tmp_path):
    a = log_run("cnn", "v1", 0.80, 0.80, servable=True)
    b = log_run("vgg19", "v1", 0.80, 0.95, servable=True)
    version, _ = tracking.register_model(NAME, b, {})
    tracking.set_alias(NAME, "champion", version)  # the later of two equal runs is champion
    summary = run_compare(tmp_path, min_delta=0.0)
    assert summary["best"]["run_id"] == a  # ties rank the earlier run first …
    assert summary["champion"]["moved"] is False and champion() == (1, b)  # … but it does not beat the champion
    assert "better by +0.0000" in summary["champion"]["reason"]
    assert n_versions() == 2  # the best run is registered all the same


def test_better_on_test_but_worse_on_validation_never_becomes_champion(mlflow_store, tmp_path):
    a = log_run("cnn", "v1", 0.80, 0.70, servable=True)
    run_compare(tmp_path)
    b = log_run("vgg19", "v1", 0.75, 0.99, servable=True)
    summary = run_compare(tmp_path)
    assert [r["run_id"] for r in summary["leaderboard"]] == [a, b]
    assert summary["champion"]["moved"] is False and champion() == (1, a)


def test_test_metrics_never_decide_rank_or_promotion(mlflow_store, tmp_path, monkeypatch):
    """The same planted runs in two stores, once with every test.* metric replaced by random values:
    the same ranking, the same champion after each compare, the same reasons (but for the run ids)."""
    rng = np.random.default_rng(15)
    vals = [0.70, 0.74, 0.745, 0.80, 0.79, 0.83]

    def history(store: str, perturb: bool) -> list:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / store}.db")
        (tmp_path / store).mkdir()
        ids, out = [], []
        for val in vals:
            run_id = log_run("cnn", "v1", val, 0.5, servable=True)
            ids.append(run_id)
            if perturb:
                noise = {
                    k: float(rng.uniform(0, 1)) for k in tracking.get_run(run_id)["metrics"] if k.startswith("test.")
                }
                assert len(noise) >= 14  # every test metric, CIs and operating point included
                set_metrics(run_id, noise, "")
            summary = run_compare(tmp_path / store)
            index = {run_id: n for n, run_id in enumerate(ids)}
            reason = summary["champion"]["reason"]
            for run_id, n in index.items():
                reason = reason.replace(run_id, f"run#{n}")
            out.append(([index[r["run_id"]] for r in summary["leaderboard"]], index[champion()[1]], reason))
        return out

    plain, perturbed = history("plain", False), history("perturbed", True)
    assert plain == perturbed
    assert plain[-1][0] == [5, 3, 4, 2, 1, 0]
    assert [champion for _, champion, _ in plain] == [0, 1, 1, 3, 3, 5]  # a gain of 0.005 < min_delta: stays


def test_a_new_model_of_the_champions_run_replaces_it(mlflow_store, tmp_path):
    a = log_run("cnn", "v1", 0.80, 0.80, servable=True)
    run_compare(tmp_path)
    with tracking.run(run_id=a):  # evaluate ran again on the same run: a new model (e.g. a new threshold)
        mlflow.pyfunc.log_model(name="model", python_model=FixedProbabilities(), pip_requirements=[])
    summary = run_compare(tmp_path)
    assert summary["champion"]["moved"] is True and champion() == (2, a)
    assert summary["champion"]["reason"] == f"v2 is a newer model of the champion's run {a}: it replaces v1"
    run_compare(tmp_path)
    assert n_versions() == 2 and champion() == (2, a)


def test_a_run_on_other_data_never_takes_the_alias_by_itself_promote_moves_it(mlflow_store, tmp_path, caplog):
    old = log_run("cnn", "v1", 0.60, 0.60, servable=True)
    run_compare(tmp_path, "v1")
    assert champion() == (1, old)
    new = log_run("cnn", "v2", 0.99, 0.99, servable=True)  # much better, on other data
    with caplog.at_level(logging.WARNING, logger="chestxray.judge.compare"):
        summary = run_compare(tmp_path, "v2")
    assert summary["champion"]["moved"] is False and champion() == (1, old) and n_versions() == 2
    assert summary["champion"]["data_version"] == "v1" and summary["champion"]["run_id"] == old
    reason = summary["champion"]["reason"]
    assert reason == (
        f"champion v1 (run {old}) is from data version v1; the best run here, {new} (validation macro_f1 0.9900),"
        " is on data version v2: scores on different data cannot be compared, so the champion stays. To make it"
        f" champion: `python -m chestxray promote {new}`"
    )
    assert read_json(tmp_path / paths.COMPARE_JSON)["champion"]["reason"] == reason
    assert [r.levelname for r in caplog.records if reason in r.getMessage()] == ["WARNING"]
    assert "not moved this time" in (tmp_path / paths.LEADERBOARD_MD).read_text()
    run_compare(tmp_path, "v2")  # again: still not
    assert champion() == (1, old)

    promoted = promote(new, settings())
    assert champion() == (2, new) and n_versions() == 2  # the version compare registered
    assert promoted["moved"] is True and promoted["data_version"] == "v2"
    assert promoted["reason"] == (
        f"promoted by hand: chestxray@champion was v1 (run {old}, data version v1), is now v2 (run {new}, data"
        " version v2)"
    )
    after = run_compare(tmp_path, "v2")["champion"]  # now on its own data: compare keeps it
    assert after["moved"] is False and after["run_id"] == new


def test_a_champion_without_validation_scores_is_kept(mlflow_store, tmp_path, caplog):
    old = log_run("cnn", "v1", None, 0.95, servable=True)  # evaluated before validation was scored
    version, _ = tracking.register_model(NAME, old, {})
    tracking.set_alias(NAME, "champion", version)
    new = log_run("vgg19", "v1", 0.70, 0.70, servable=True)
    with caplog.at_level(logging.WARNING, logger="chestxray.judge.compare"):
        summary = run_compare(tmp_path)
    assert summary["champion"]["moved"] is False and champion() == (1, old)
    assert "has no validation macro_f1 (evaluated before validation was scored)" in summary["champion"]["reason"]
    assert f"python -m chestxray promote {new}" in caplog.text


def test_registry_tags_say_where_the_champion_came_from(mlflow_store, tmp_path):
    a = log_run("cnn", "v1", 0.80, 0.78, servable=True)
    run_compare(tmp_path)
    expected = {
        "data_version": "v1",
        "data.source": "kaggle",
        "data.slug": "owner/radiography",
        "val.macro_f1": "0.8",
        "test.macro_f1": "0.78",
    }
    assert MlflowClient(tracking.tracking_uri()).get_model_version(NAME, "1").tags == expected
    version, _ = tracking.register_model(NAME, a, {})  # a version registered without tags gets them on promote
    MlflowClient(tracking.tracking_uri()).delete_model_version_tag(NAME, str(version), "data.slug")
    promote(a, settings())
    assert MlflowClient(tracking.tracking_uri()).get_model_version(NAME, "1").tags == expected


# promote on the command line


def test_promote_command_moves_the_alias_and_refuses_in_one_line(mlflow_store, tmp_path, monkeypatch, caplog):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    a = log_run("cnn", "v1", 0.80, 0.80, servable=True)
    untrained = log_run("vgg19", "v1", 0.90, 0.90)  # no logged model
    with caplog.at_level(logging.INFO, logger="chestxray"):
        assert main(["promote", a]) == 0
    assert champion() == (1, a)
    assert f"chestxray@champion was no champion, is now v1 (run {a}, data version v1)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="chestxray"):
        assert main(["promote", "0" * 32]) == 1
        assert main(["promote", untrained]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"promote: no run {'0' * 32} in {mlflow_store}",
        f"promote: run {untrained} logged no model 'model' (not evaluated yet?); nothing to promote",
    ]
    assert champion() == (1, a)
    assert main(["promote", a, "--model", "other"]) == 0
    found = MlflowClient(mlflow_store).get_model_version_by_alias("other", "champion")
    assert found.run_id == a


def test_promote_refuses_an_unknown_run(mlflow_store):
    with pytest.raises(UserError, match="no run nope in"):
        promote("nope", settings())


# Audit runs (border only)


def test_a_border_only_audit_run_is_ranked_but_never_champion_and_cannot_be_promoted(mlflow_store, tmp_path):
    audit = log_run("cnn", "v1", 0.95, 0.93, servable=True, occlude=0.6)  # best on validation, by far
    plain = log_run("cnn", "v1", 0.70, 0.72, servable=True)
    summary = run_compare(tmp_path)
    assert [row["run_id"] for row in summary["leaderboard"]] == [audit, plain]  # ranked, for comparison
    assert summary["audit_runs"] == [audit]
    assert summary["best"]["run_id"] == plain and champion() == (1, plain)
    assert summary["champion"]["run_id"] == plain and summary["champion"]["moved"] is True
    assert summary["mcnemar"] is None  # one contender: the audit run is not tested against it
    board = (tmp_path / paths.LEADERBOARD_MD).read_text()
    assert "border only (centre 60% blacked out; audit)" in board and "never become champion" in board
    assert [row["input"] for row in summary["leaderboard"]] == [
        "border only (centre 60% blacked out; audit)",
        "whole image",
    ]
    assert len({row["setting"] for row in summary["leaderboard"]}) == 2  # not one seed group
    with pytest.raises(UserError, match=f"promote: run {audit} is a border-only audit run"):
        promote(audit, settings())
    assert champion() == (1, plain) and n_versions() == 1  # refused before registering anything


def test_compare_refreshes_the_champions_card_with_the_best_border_only_run(mlflow_store, tmp_path):
    from chestxray.judge import model_card

    plain = log_run("cnn", "v1", 0.80, 0.82, servable=True)
    card = tmp_path / "model_card.md"
    before = ["# Model card: cnn", "", *model_card.border_only_block(None, 0.82, 4), "", "## Known limitations"]
    card.write_text("\n".join(before))
    tracking.log_artifact_to(plain, card)
    with tracking.run(run_id=plain):  # a 4-class run, as evaluate logs its supports
        tracking.log_metrics({f"per_class.{c}.support": 10 for c in ("A", "B", "C", "D")}, prefix="test.")
    run_compare(tmp_path)
    text = Path(MlflowClient(mlflow_store).download_artifacts(plain, "model_card.md", str(tmp_path / "a"))).read_text()
    assert "No border-only audit run on this data version yet" in text  # nothing to quote yet
    weak = log_run("cnn", "v1", 0.40, 0.45, occlude=0.6)
    strong = log_run("cnn", "v1", 0.79, 0.77, occlude=0.6)  # chosen on validation: its test score is quoted
    log_run("cnn", "v2", 0.99, 0.99, occlude=0.6)  # other data: never quoted
    run_compare(tmp_path)
    text = Path(MlflowClient(mlflow_store).download_artifacts(plain, "model_card.md", str(tmp_path / "b"))).read_text()
    name = MlflowClient(mlflow_store).get_run(strong).info.run_name
    assert f"audit run `{name}`" in text and "scores test macro-F1 **0.770**, against 0.820" in text
    assert "Nearly all of what this model scores can be had without looking at the lungs" in text
    assert text.startswith("# Model card: cnn") and text.endswith("## Known limitations")
    assert weak not in text and "0.450" not in text


# Seed groups


def test_runs_that_differ_only_in_train_seed_form_one_group(mlflow_store, tmp_path):
    seeds = [
        log_run("cnn", "v1", val, test, seed=s) for s, val, test in ((1, 0.80, 0.70), (2, 0.84, 0.74), (3, 0.83, 0.78))
    ]
    longer = log_run("cnn", "v1", 0.90, 0.90, seed=1, epochs=9)  # another setting
    other = log_run("vgg19", "v1", 0.60, 0.60, seed=1)
    summary = run_compare(tmp_path)
    groups = summary["seed_groups"]
    assert [g["runs"] for g in groups] == [[longer], [seeds[1], seeds[2], seeds[0]], [other]]
    group = groups[1]
    assert (group["n"], group["model"], group["seeds"]) == (3, "cnn", [2, 3, 1])
    assert group["validation"]["mean"] == pytest.approx(statistics.mean([0.80, 0.84, 0.83]), abs=1e-6)
    assert group["validation"]["sd"] == pytest.approx(statistics.stdev([0.80, 0.84, 0.83]), abs=1e-6)
    assert group["test"]["mean"] == pytest.approx(0.74, abs=1e-6) and group["test"]["sd"] == pytest.approx(0.04)
    assert groups[0]["validation"] == {"mean": 0.9, "sd": None}
    board = (tmp_path / paths.LEADERBOARD_MD).read_text()
    assert "## Runs that differ only in train.seed" in board
    assert "| cnn | 3 | 0.823 ± 0.021 | 0.740 ± 0.040 | 2, 3, 1 |" in board
    assert "| cnn | 1 | 0.900 | 0.900 | 1 |" in board


def test_a_different_evaluate_setting_is_another_group(mlflow_store, tmp_path):
    a = log_run("cnn", "v1", 0.80, 0.80, seed=1)
    b = log_run("cnn", "v1", 0.82, 0.80, seed=2)
    with tracking.run(run_id=b):
        tracking.set_tags({"evaluate.bootstrap": 2000})
    assert [g["runs"] for g in run_compare(tmp_path)["seed_groups"]] == [[b], [a]]


# compare.json and the reports


def test_compare_json_leaderboard_and_chart(mlflow_store, tmp_path):
    first = [True] * 7 + [False] + [True] * 10 + [False] * 2
    second = [False] * 7 + [True] + [True] * 10 + [False] * 2
    a = log_run("resnet50", "v1", 0.884, 0.80, accuracy=0.9, servable=True, preds=predictions(first), tmp_path=tmp_path)
    b = log_run("cnn", "v1", 0.75, 0.85, accuracy=0.6, servable=True, preds=predictions(second), tmp_path=tmp_path)
    summary = run_compare(tmp_path)
    names = {row["run_id"]: row["run_name"] for row in summary["leaderboard"]}
    assert read_json(tmp_path / paths.COMPARE_JSON) == summary
    assert summary["metric"] == "macro_f1" and summary["n_runs"] == 2 and summary["data_version"] == "v1"
    assert summary["mcnemar"] == {
        "run_a": a,
        "run_b": b,
        "model_a": "resnet50",
        "model_b": "cnn",
        "n": 20,
        "a_only_correct": 7,
        "b_only_correct": 1,
        "p_value": pytest.approx(0.0703125),
        "significant": False,
    }
    keys = ("name", "version", "run_id", "model", "data_version", "validation", "test", "moved")
    assert {k: summary["champion"][k] for k in keys} == {
        "name": NAME,
        "version": 1,
        "run_id": a,
        "model": "resnet50",
        "data_version": "v1",
        "validation": 0.884,
        "test": 0.8,
        "moved": True,
    }
    board = (tmp_path / paths.LEADERBOARD_MD).read_text()
    assert f"`chestxray@champion` → version 1, run {names[a]} (`{a}`, resnet50, data version v1" in board
    assert "validation macro_f1 0.8840, test macro_f1 0.8000" in board
    rows = [line for line in board.splitlines() if line.startswith("| ")][1:3]
    assert rows[0].startswith("| ★ | 1 |") and rows[1].startswith("|  | 2 |")
    # validation ranks; the served rule's threshold, sensitivity and specificity lead the test columns
    served = "| 0.310 | 0.930 [0.850, 0.980] | 0.770 [0.700, 0.830] |"
    assert f"| 0.884 [0.829, 0.931] {served} 0.800 [0.745, 0.847] | 0.900 |" in rows[0]
    assert "| 4.200 |" in rows[0] and "| class_weight |" in rows[0]
    assert "McNemar's exact test on the test set (reported; it decides nothing)" in board
    assert f"#1 {names[a]} vs #2 {names[b]} on the same 20 test images: 7 right only by #1, 1 only by #2" in board
    assert "p = 0.07031: on test they do not differ significantly (α = 0.05)" in board
    width, height = png_size(tmp_path / paths.LEADERBOARD_PNG)
    assert 400 < width < 2000 and 150 < height < 1000
