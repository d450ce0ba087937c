"""Metric functions checked against values worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from chestxray.counts import confusion
from chestxray.judge import metrics as metrics_module
from chestxray.judge.evaluation import pr_curves, roc_curves
from chestxray.judge.metrics import (
    METRICS,
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    reliability,
)
from chestxray.serve.decision import decide

CLASSES = ["COVID", "B", "C"]  # every task has COVID, the positive class
# true, predicted (argmax)
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
Y_PROB = np.array(
    [
        [0.7, 0.2, 0.1],  # 0 -> 0
        [0.6, 0.3, 0.1],  # 0 -> 0
        [0.5, 0.3, 0.2],  # 0 -> 0
        [0.3, 0.6, 0.1],  # 0 -> 1
        [0.2, 0.7, 0.1],  # 1 -> 1
        [0.1, 0.8, 0.1],  # 1 -> 1
        [0.5, 0.2, 0.3],  # 1 -> 0
        [0.1, 0.1, 0.8],  # 2 -> 2
        [0.2, 0.2, 0.6],  # 2 -> 2
        [0.2, 0.5, 0.3],  # 2 -> 1
    ]
)
# Confusion matrix (rows true, cols predicted):
#   COVID: 3 1 0 | B: 1 2 0 | C: 0 1 2     column sums 4, 4, 2
PRECISION = {"COVID": 3 / 4, "B": 2 / 4, "C": 2 / 2}
RECALL = {"COVID": 3 / 4, "B": 2 / 3, "C": 2 / 3}
F1 = {"COVID": 3 / 4, "B": 4 / 7, "C": 4 / 5}  # 2PR/(P+R)
SPECIFICITY = {"COVID": 5 / 6, "B": 5 / 7, "C": 7 / 7}  # TN/(TN+FP): COVID TN=10-4-4+3, FP=1 ...
SUPPORT = {"COVID": 4, "B": 3, "C": 3}
# One-vs-rest AUC = fraction of (positive, negative) pairs ranked right, ties count 1/2:
# COVID: (6 + 6 + 5.5 + 5) / 24, B: (7 + 7 + 2) / 21, C: (7 + 7 + 6.5) / 21
AUC = {"COVID": 15 / 16, "B": 16 / 21, "C": 41 / 42}
# Average precision = Σ (ΔR) · P over the thresholds, highest first (tied scores form one step):
# COVID: P 1, 1, 3/4 (0.5 ties a negative), 4/5 at R 1/4, 1/2, 3/4, 1
# B: P 1, 1 at R 1/3, 2/3; the last positive (0.2) comes with 6 negatives: P 3/9 at R 1
# C: P 1, 1 at R 1/3, 2/3; 0.3 ties a negative: P 3/4 at R 1
PR_AUC = {"COVID": (1 + 1 + 3 / 4 + 4 / 5) / 4, "B": 2 / 3 + 1 / 9, "C": 2 / 3 + 1 / 4}
# Top-label calibration, 10 bins: confidence 0.5 ×3 (1 right), 0.6 ×3 (2 right), 0.7 ×2 (2), 0.8 ×2 (2)
ECE = (3 * abs(1 / 3 - 0.5) + 3 * abs(2 / 3 - 0.6) + 2 * abs(1 - 0.7) + 2 * abs(1 - 0.8)) / 10


def approx(value: float) -> object:
    return pytest.approx(value, abs=1e-6)


@pytest.fixture(scope="module")
def result() -> dict:
    return classification_metrics(Y_TRUE, Y_PROB, CLASSES)


def test_overall_metrics(result: dict) -> None:
    assert result["n"] == 10
    assert result["accuracy"] == approx(7 / 10)
    assert result["balanced_accuracy"] == approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert result["macro_precision"] == approx((3 / 4 + 1 / 2 + 1) / 3)
    assert result["macro_recall"] == approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert result["macro_f1"] == approx((3 / 4 + 4 / 7 + 4 / 5) / 3)
    assert result["weighted_f1"] == approx((4 * 3 / 4 + 3 * 4 / 7 + 3 * 4 / 5) / 10)
    true_probs = [0.7, 0.6, 0.5, 0.3, 0.7, 0.8, 0.2, 0.8, 0.6, 0.3]
    assert result["log_loss"] == approx(-sum(math.log(p) for p in true_probs) / 10)
    assert result["roc_auc_macro"] == approx((15 / 16 + 16 / 21 + 41 / 42) / 3)
    assert result["weighted_precision"] == approx((4 * 3 / 4 + 3 * 1 / 2 + 3 * 1) / 10)
    assert result["weighted_recall"] == approx(7 / 10)  # support-weighted recall is accuracy
    assert result["pr_auc_macro"] == approx(sum(PR_AUC.values()) / 3)
    assert result["ece"] == approx(ECE)
    assert result["covid_sensitivity"] == approx(3 / 4) and result["covid_specificity"] == approx(5 / 6)
    assert set(result) == {m.name for m in METRICS} | {"n", "per_class"}  # the registry, and nothing else


@pytest.mark.parametrize("name", CLASSES)
def test_per_class_metrics(result: dict, name: str) -> None:
    row = result["per_class"][name]
    assert row["precision"] == approx(PRECISION[name])
    assert row["recall"] == approx(RECALL[name])
    assert row["specificity"] == approx(SPECIFICITY[name])
    assert row["f1"] == approx(F1[name])
    assert row["roc_auc"] == approx(AUC[name])
    assert row["pr_auc"] == approx(PR_AUC[name])
    assert row["support"] == SUPPORT[name] and type(row["support"]) is int


def test_values_are_plain_rounded_floats(result: dict) -> None:
    assert type(result["accuracy"]) is float and type(result["n"]) is int
    assert result["macro_f1"] == round(result["macro_f1"], 6)
    json.dumps(result, allow_nan=False)


def test_log_loss_tiny_case() -> None:
    out = classification_metrics(np.array([0, 1]), np.array([[0.8, 0.2], [0.4, 0.6]]), ["COVID", "y"])
    assert out["log_loss"] == approx(-(math.log(0.8) + math.log(0.6)) / 2)


def test_perfect_ranking_gives_auc_one() -> None:
    y_prob = np.array([[0.9, 0.1], [0.6, 0.4], [0.45, 0.55], [0.2, 0.8]])
    out = classification_metrics(np.array([0, 0, 1, 1]), y_prob, ["COVID", "y"])
    assert out["roc_auc_macro"] == 1.0
    assert out["per_class"]["COVID"]["roc_auc"] == 1.0 and out["per_class"]["y"]["roc_auc"] == 1.0


def test_auc_counts_concordant_pairs_with_ties_as_half() -> None:
    # positives score 0.5, 0.9; negatives 0.2, 0.5 -> pairs: 1 + 0.5 + 1 + 1 = 3.5 of 4
    p1 = np.array([0.2, 0.5, 0.5, 0.9])
    out = classification_metrics(np.array([0, 0, 1, 1]), np.column_stack([1 - p1, p1]), ["COVID", "y"])
    assert out["per_class"]["y"]["roc_auc"] == approx(7 / 8)


def test_class_missing_from_y_true() -> None:
    y_true = np.array([0, 0, 1, 1])
    y_prob = np.array([[0.7, 0.2, 0.1], [0.2, 0.1, 0.7], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1]])
    out = classification_metrics(y_true, y_prob, CLASSES)
    c = out["per_class"]["C"]
    assert c["roc_auc"] is None and c["support"] == 0 and c["recall"] == 0.0
    assert c["precision"] == 0.0  # one wrong prediction of C
    assert c["specificity"] == approx(3 / 4)  # TN=3, FP=1
    # COVID: positives 0.7, 0.2 vs negatives 0.3, 0.1 -> 3 of 4 pairs; B ranks perfectly
    assert out["per_class"]["COVID"]["roc_auc"] == approx(3 / 4) and out["per_class"]["B"]["roc_auc"] == 1.0
    assert out["roc_auc_macro"] == approx((3 / 4 + 1) / 2)  # mean of the defined AUCs only
    assert out["balanced_accuracy"] == approx((1 / 2 + 1) / 2)  # classes present in y_true
    assert out["log_loss"] == approx(-(math.log(0.7) + math.log(0.2) + math.log(0.6) + math.log(0.8)) / 4)
    json.dumps(out, allow_nan=False)


def test_macro_f1_leaves_out_a_class_that_never_occurs() -> None:
    """Neither actual nor predicted, C has no F1: macro-F1 is the mean over COVID and B, as its
    bootstrap interval is (a resample can miss a rare class)."""
    y_prob = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1]])
    out = classification_metrics(np.array([0, 0, 1, 1]), y_prob, CLASSES)
    assert out["per_class"]["C"]["f1"] == 0.0 and out["per_class"]["C"]["support"] == 0
    assert out["macro_f1"] == approx((4 / 5 + 2 / 3) / 2)  # COVID: 2·2/(2+3), B: 2·1/(2+1)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(Y_TRUE, Y_PROB[:, :2], CLASSES)


def test_confusion_exact() -> None:
    cm = confusion(Y_TRUE, Y_PROB.argmax(axis=1), 3)
    assert cm.tolist() == [[3, 1, 0], [1, 2, 0], [0, 1, 2]]
    assert confusion(np.array([0, 1]), np.array([1, 1]), 4).tolist() == [
        [0, 1, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]


def test_roc_curves_endpoints_and_finite_thresholds() -> None:
    curves = roc_curves(Y_TRUE, Y_PROB, CLASSES)
    assert list(curves) == CLASSES
    for curve in curves.values():
        assert list(curve.columns) == ["fpr", "tpr", "threshold"]
        assert (curve["fpr"].iloc[0], curve["tpr"].iloc[0]) == (0.0, 0.0)
        assert (curve["fpr"].iloc[-1], curve["tpr"].iloc[-1]) == (1.0, 1.0)
        assert np.isfinite(curve.to_numpy()).all()
        assert curve["threshold"].iloc[0] == 1.0


def test_roc_curves_skip_class_without_positives() -> None:
    y_prob = np.array([[0.7, 0.2, 0.1], [0.2, 0.1, 0.7], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1]])
    assert list(roc_curves(np.array([0, 0, 1, 1]), y_prob, CLASSES)) == ["COVID", "B"]


def test_reliability_table_and_ece() -> None:
    table = reliability(Y_TRUE, Y_PROB, bins=10)
    assert table["count"].tolist() == [0, 0, 0, 0, 3, 3, 2, 2, 0, 0]
    filled = table[table["count"] > 0]
    assert filled["confidence"].tolist() == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert filled["accuracy"].tolist() == pytest.approx([1 / 3, 2 / 3, 1, 1])
    assert expected_calibration_error(table) == approx(ECE)
    assert table["low"].iloc[0] == 0 and table["high"].iloc[-1] == 1
    # a confidence of exactly 1.0 lands in the last bin, not past it
    assert reliability(np.array([0]), np.array([[1.0, 0.0]]), bins=4)["count"].tolist() == [0, 0, 0, 1]


def test_pr_curves_end_at_full_recall_and_skip_absent_classes() -> None:
    curves = pr_curves(Y_TRUE, Y_PROB, CLASSES)
    assert list(curves) == CLASSES
    a = curves["COVID"]
    assert list(a.columns) == ["recall", "precision", "threshold"]
    assert a["recall"].max() == 1.0 and (a["recall"].iloc[-1], a["precision"].iloc[-1]) == (0.0, 1.0)
    # step integral of the curve is the average precision worked out above
    area = -np.sum(np.diff(a["recall"]) * a["precision"].iloc[:-1])
    assert area == approx(PR_AUC["COVID"])
    y_prob = np.array([[0.7, 0.2, 0.1], [0.2, 0.1, 0.7], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1]])
    assert list(pr_curves(np.array([0, 0, 1, 1]), y_prob, CLASSES)) == ["COVID", "B"]


COVID_CLASSES = ["COVID", "Normal", "Viral Pneumonia"]


def random_predictions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, imperfect classifier's probabilities: the true class most probable 80 % of the time."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)
    y_pred = np.where(rng.random(n) < 0.8, y_true, rng.integers(0, 3, n))
    y_prob = rng.dirichlet(np.ones(3), n) * 0.5
    y_prob[np.arange(n), y_pred] += 0.5
    return y_true, y_prob


def singletons(n: int) -> list[str]:
    """Every image its own group, named so that sorted order is image order."""
    return [f"g{i:05d}" for i in range(n)]


def by_hand(y_true: np.ndarray, y_prob: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    """Each interval metric of the images ``rows`` (repeats counted), with sklearn."""
    t, prob = y_true[rows], y_prob[rows]
    p = prob.argmax(axis=1)
    present = [c for c in range(3) if (t == c).any() and (t != c).any()]
    table = reliability(t, prob, 10)
    return {
        "macro_f1": skm.f1_score(t, p, labels=np.union1d(t, p), average="macro", zero_division=0),
        "accuracy": skm.accuracy_score(t, p),
        "balanced_accuracy": skm.balanced_accuracy_score(t, p),
        "roc_auc_macro": np.mean([skm.roc_auc_score(t == c, prob[:, c]) for c in present]),
        "covid_sensitivity": np.mean(p[t == 0] == 0),
        "covid_specificity": np.mean(p[t != 0] != 0),
        "ece": expected_calibration_error(table),
    }


def test_bootstrap_ci_equals_resampling_images_by_hand() -> None:
    """Every image its own group: the plain bootstrap, every interval metric recomputed with sklearn."""
    y_true, y_prob = random_predictions(60, seed=3)
    ci = bootstrap_ci(y_true, y_prob, singletons(60), COVID_CLASSES, resamples=200, seed=11)
    idx = np.random.default_rng(11).integers(0, 60, size=(200, 60))
    stats = [by_hand(y_true, y_prob, rows) for rows in idx]
    assert set(ci) == {"macro_f1", "accuracy", "balanced_accuracy", "roc_auc_macro", "covid_sensitivity",
                       "covid_specificity", "ece"}  # fmt: skip
    for name in ci:
        low, high = np.percentile([s[name] for s in stats], [2.5, 97.5])
        assert ci[name] == {"low": approx(low), "high": approx(high), "collapsed": False}, name


def test_bootstrap_draws_whole_groups() -> None:
    """Groups of 3 images: a resample draws 20 groups with replacement and takes each one's 3 images."""
    y_true, y_prob = random_predictions(60, seed=4)
    groups = [f"g{i // 3:03d}" for i in range(60)]
    ci = bootstrap_ci(y_true, y_prob, groups, COVID_CLASSES, resamples=200, seed=5)
    drawn = np.random.default_rng(5).integers(0, 20, size=(200, 20))
    stats = [by_hand(y_true, y_prob, (3 * picks[:, None] + np.arange(3)).ravel()) for picks in drawn]
    for name in ci:
        low, high = np.percentile([s[name] for s in stats], [2.5, 97.5])
        assert ci[name] == {"low": approx(low), "high": approx(high), "collapsed": False}, name


def test_groups_of_copies_widen_the_interval_as_they_should() -> None:
    """Five copies of each of 200 images are 200 independent cases, not 1,000: the group bootstrap's
    interval is as wide as the 200 images' own, the image-level one about sqrt(5) times too narrow."""
    y_true, y_prob = random_predictions(200, seed=6)
    copies = np.repeat(np.arange(200), 5)
    width = {}
    for name, groups in (("cases", singletons(200)), ("grouped", copies.astype(str)), ("images", singletons(1000))):
        rows = np.arange(200) if name == "cases" else copies
        ci = bootstrap_ci(y_true[rows], y_prob[rows], groups, COVID_CLASSES, 2000, seed=1)["accuracy"]
        width[name] = ci["high"] - ci["low"]
    assert width["grouped"] == pytest.approx(width["cases"], rel=0.15)
    assert width["grouped"] / width["images"] == pytest.approx(5**0.5, rel=0.2)


def test_each_ci_contains_its_point_estimate_and_is_seeded() -> None:
    y_true, y_prob = random_predictions(300, seed=5)
    ci = bootstrap_ci(y_true, y_prob, singletons(300), COVID_CLASSES, resamples=1000, seed=42)
    point = classification_metrics(y_true, y_prob, COVID_CLASSES)
    for name in ci:
        assert ci[name]["low"] < point[name] < ci[name]["high"], name
        assert ci[name]["high"] - ci[name]["low"] < 0.2, name  # 300 images: a few points either side
    assert bootstrap_ci(y_true, y_prob, singletons(300), COVID_CLASSES, 1000, seed=42) == ci
    assert bootstrap_ci(y_true, y_prob, singletons(300), COVID_CLASSES, 1000, seed=43) != ci


def test_bootstrap_in_chunks_gives_the_same_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays bounded at any resample count, and the intervals do not depend on the chunking."""
    y_true, y_prob = random_predictions(301, seed=7)
    whole = bootstrap_ci(y_true, y_prob, singletons(301), COVID_CLASSES, 1000, seed=42)
    monkeypatch.setattr(metrics_module, "BOOTSTRAP_CHUNK", 301 * 7)  # 7 resamples per chunk, the last one short
    assert bootstrap_ci(y_true, y_prob, singletons(301), COVID_CLASSES, 1000, seed=42) == whole


def test_an_interval_every_resample_agrees_on_is_reported_collapsed() -> None:
    """Perfect predictions: every resample scores 1, and [1, 1] would claim a certainty the data lacks."""
    y = np.array([0, 1, 2, 0, 1, 2, 0])  # resamples that miss a class still score 1
    ci = bootstrap_ci(y, np.eye(3)[y] * 0.9 + 0.1 / 3, singletons(7), COVID_CLASSES, resamples=1000, seed=0)
    collapsed = {"low": None, "high": None, "collapsed": True}
    assert all(ci[name] == collapsed for name in ci if name != "ece")
    assert ci["ece"]["collapsed"] is True  # every resample: confidence 0.933, all right


def test_decision_at_the_operating_point() -> None:
    prob = np.array([[0.3, 0.6, 0.1], [0.2, 0.1, 0.7], [0.9, 0.05, 0.05]])
    assert decide(prob, COVID_CLASSES, 0.25).tolist() == [0, 2, 0]  # 0.3 ≥ 0.25: COVID over the argmax
    assert decide(prob, COVID_CLASSES, 0.95).tolist() == [1, 2, 1]  # below: the most probable other class
    assert decide(np.array([[0.3, 0.7]]), ["COVID", "non-COVID"], 0.3).tolist() == [0]
