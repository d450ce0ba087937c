"""Metric functions checked against values worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from chestxray.evaluation import classification_metrics, confusion, roc_curves

CLASSES = ["A", "B", "C"]
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
#   A: 3 1 0 | B: 1 2 0 | C: 0 1 2     column sums 4, 4, 2
PRECISION = {"A": 3 / 4, "B": 2 / 4, "C": 2 / 2}
RECALL = {"A": 3 / 4, "B": 2 / 3, "C": 2 / 3}
F1 = {"A": 3 / 4, "B": 4 / 7, "C": 4 / 5}  # 2PR/(P+R)
SPECIFICITY = {"A": 5 / 6, "B": 5 / 7, "C": 7 / 7}  # TN/(TN+FP): A TN=10-4-4+3, FP=1 ...
SUPPORT = {"A": 4, "B": 3, "C": 3}
# One-vs-rest AUC = fraction of (positive, negative) pairs ranked right, ties count 1/2:
# A: (6 + 6 + 5.5 + 5) / 24, B: (7 + 7 + 2) / 21, C: (7 + 7 + 6.5) / 21
AUC = {"A": 15 / 16, "B": 16 / 21, "C": 41 / 42}


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


@pytest.mark.parametrize("name", CLASSES)
def test_per_class_metrics(result: dict, name: str) -> None:
    row = result["per_class"][name]
    assert row["precision"] == approx(PRECISION[name])
    assert row["recall"] == approx(RECALL[name])
    assert row["specificity"] == approx(SPECIFICITY[name])
    assert row["f1"] == approx(F1[name])
    assert row["roc_auc"] == approx(AUC[name])
    assert row["support"] == SUPPORT[name] and type(row["support"]) is int


def test_values_are_plain_rounded_floats(result: dict) -> None:
    assert type(result["accuracy"]) is float and type(result["n"]) is int
    assert result["macro_f1"] == round(result["macro_f1"], 6)
    json.dumps(result, allow_nan=False)


def test_log_loss_tiny_case() -> None:
    out = classification_metrics(np.array([0, 1]), np.array([[0.8, 0.2], [0.4, 0.6]]), ["x", "y"])
    assert out["log_loss"] == approx(-(math.log(0.8) + math.log(0.6)) / 2)


def test_perfect_ranking_gives_auc_one() -> None:
    y_prob = np.array([[0.9, 0.1], [0.6, 0.4], [0.45, 0.55], [0.2, 0.8]])
    out = classification_metrics(np.array([0, 0, 1, 1]), y_prob, ["x", "y"])
    assert out["roc_auc_macro"] == 1.0
    assert out["per_class"]["x"]["roc_auc"] == 1.0 and out["per_class"]["y"]["roc_auc"] == 1.0


def test_auc_counts_concordant_pairs_with_ties_as_half() -> None:
    # positives score 0.5, 0.9; negatives 0.2, 0.5 -> pairs: 1 + 0.5 + 1 + 1 = 3.5 of 4
    p1 = np.array([0.2, 0.5, 0.5, 0.9])
    out = classification_metrics(np.array([0, 0, 1, 1]), np.column_stack([1 - p1, p1]), ["x", "y"])
    assert out["per_class"]["y"]["roc_auc"] == approx(7 / 8)


def test_class_missing_from_y_true() -> None:
    y_true = np.array([0, 0, 1, 1])
    y_prob = np.array([[0.7, 0.2, 0.1], [0.2, 0.1, 0.7], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1]])
    out = classification_metrics(y_true, y_prob, CLASSES)
    c = out["per_class"]["C"]
    assert c["roc_auc"] is None and c["support"] == 0 and c["recall"] == 0.0
    assert c["precision"] == 0.0  # one wrong prediction of C
    assert c["specificity"] == approx(3 / 4)  # TN=3, FP=1
    # A: positives 0.7, 0.2 vs negatives 0.3, 0.1 -> 3 of 4 pairs; B ranks perfectly
    assert out["per_class"]["A"]["roc_auc"] == approx(3 / 4) and out["per_class"]["B"]["roc_auc"] == 1.0
    assert out["roc_auc_macro"] == approx((3 / 4 + 1) / 2)  # mean of the defined AUCs only
    assert out["balanced_accuracy"] == approx((1 / 2 + 1) / 2)  # classes present in y_true
    assert out["log_loss"] == approx(-(math.log(0.7) + math.log(0.2) + math.log(0.6) + math.log(0.8)) / 4)
    json.dumps(out, allow_nan=False)


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
    assert list(roc_curves(np.array([0, 0, 1, 1]), y_prob, CLASSES)) == ["A", "B"]
