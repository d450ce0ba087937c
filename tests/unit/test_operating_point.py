"""The operating point (chestxray.judge.operating_point): the exact bounds, both threshold rules,
and a simulation of how often each rule's threshold keeps the target on a new test set."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import stats

from chestxray.errors import UserError
from chestxray.judge.operating_point import (
    choose_threshold,
    exact_interval,
    lower_bound,
    operating_point,
    positives_needed,
    required_found,
)

BINARY = ["COVID", "non-COVID"]
log = logging.getLogger(__name__)


def probabilities(scores: np.ndarray) -> np.ndarray:
    """(N, 2) probabilities whose COVID column is ``scores``."""
    return np.column_stack([scores, 1 - scores])


def labels(positives: int, negatives: int) -> np.ndarray:
    """Class indices of ``positives`` COVID images then ``negatives`` others (BINARY)."""
    return np.array([0] * positives + [1] * negatives)


@pytest.mark.parametrize("found", [0, 1, 13, 25, 26])
def test_lower_bound_is_the_one_sided_clopper_pearson_bound(found: int) -> None:
    expected = stats.binomtest(found, 26, alternative="greater").proportion_ci(0.95, method="exact").low
    assert float(lower_bound(found, 26)) == pytest.approx(expected, abs=1e-12)


def test_lower_bound_of_all_found_is_the_closed_form() -> None:
    # n of n found: P(all found | p) = p^n = 0.05 at the bound
    assert float(lower_bound(26, 26)) == pytest.approx(0.05 ** (1 / 26)) == pytest.approx(0.891170, abs=1e-6)
    assert lower_bound(np.array([0, 26]), 26).tolist() == [0.0, pytest.approx(0.891170, abs=1e-6)]


def test_positives_needed_to_certify_a_target() -> None:
    assert positives_needed(0.95) == 59
    assert float(lower_bound(59, 59)) >= 0.95 > float(lower_bound(58, 58))
    assert positives_needed(0.9) == 29 and positives_needed(0.99) == 299
    assert positives_needed(1.0) is None


def test_required_found_by_rule() -> None:
    assert required_found(20, 0.95, "point") == 19
    assert required_found(26, 0.95, "lower_bound") is None  # 26 of 26 gives 0.891
    k = required_found(300, 0.95, "lower_bound")
    assert float(lower_bound(k, 300)) >= 0.95 > float(lower_bound(k - 1, 300))
    assert k == 292


def test_exact_interval_against_hand_computed_values() -> None:
    # 0 of 10: [0, 1 - 0.025^(1/10)]; 10 of 10: [0.025^(1/10), 1]; 7 of 50 from scipy's documentation
    assert exact_interval(0, 10) == {"low": 0.0, "high": round(1 - 0.025**0.1, 6)} == {"low": 0.0, "high": 0.308497}
    assert exact_interval(10, 10) == {"low": 0.691503, "high": 1.0}
    assert exact_interval(7, 50) == {"low": 0.058192, "high": 0.267396}
    assert exact_interval(0, 0) == {"low": None, "high": None}


def test_point_rule_is_the_highest_threshold_reaching_the_target() -> None:
    val_pos, val_neg = [0.9, 0.8, 0.7, 0.4, 0.2], [0.6, 0.3, 0.1, 0.05]
    test_scores = np.array([0.5, 0.3, 0.45, 0.1])  # positives 0.5, 0.3; negatives 0.45, 0.1
    op = operating_point(
        labels(5, 4),
        probabilities(np.array(val_pos + val_neg)),
        labels(2, 2),
        probabilities(test_scores),
        BINARY,
        0.8,
        "point",
    )
    # 4 of 5 found at 0.4; at the next score up (0.6) only 3 of 5
    assert op["threshold"] == 0.4 and op["val_sensitivity"] == 0.8 and op["val_specificity"] == 0.75
    assert op["target_met"] is True and op["rule"] == "point" and op["val_positives"] == 5
    assert op["val_sensitivity_lower_bound"] == pytest.approx(float(lower_bound(4, 5)), abs=1e-6)
    assert (op["sensitivity"], op["specificity"], op["positives"], op["negatives"]) == (0.5, 0.5, 2, 2)
    assert op["ci"] == {"sensitivity": exact_interval(1, 2), "specificity": exact_interval(1, 2)}
    assert op["ci"]["sensitivity"] == {"low": 0.012579, "high": 0.987421}  # 0.025^(1/2) and 1 - it


def test_lower_bound_rule_certifies_the_target_when_validation_is_large_enough() -> None:
    # 100 validation positives scored 0.01 … 1.00: the lower-bound rule needs 99 found (bound 0.9534),
    # the point rule 95
    positives = np.arange(1, 101) / 100
    negatives = np.array([0.015, 0.025, 0.5])
    y_val, prob_val = labels(100, 3), probabilities(np.concatenate([positives, negatives]))
    point = operating_point(y_val, prob_val, y_val, prob_val, BINARY, 0.95, "point")
    bound = operating_point(y_val, prob_val, y_val, prob_val, BINARY, 0.95, "lower_bound")
    assert point["threshold"] == 0.06 and point["val_sensitivity"] == 0.95 and point["target_met"] is True
    assert point["val_sensitivity_lower_bound"] < 0.95
    assert bound["threshold"] == 0.02 and bound["val_sensitivity"] == 0.99 and bound["target_met"] is True
    assert bound["val_sensitivity_lower_bound"] == pytest.approx(float(lower_bound(99, 100)), abs=1e-6)
    assert bound["val_sensitivity_lower_bound"] >= 0.95 > float(lower_bound(98, 100))
    # the price: the negative scored 0.025 is now called COVID too
    assert (point["val_specificity"], bound["val_specificity"]) == (round(2 / 3, 6), round(1 / 3, 6))


def test_lower_bound_rule_with_too_few_positives_finds_them_all_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    positives = np.linspace(0.3, 0.99, 26)  # as the synthetic validation split: 26 COVID images
    y_val, prob_val = labels(26, 2), probabilities(np.concatenate([positives, [0.1, 0.5]]))
    with caplog.at_level(logging.WARNING, logger="chestxray.judge.operating_point"):
        op = operating_point(y_val, prob_val, y_val, prob_val, BINARY, 0.95, "lower_bound")
    assert op["threshold"] == pytest.approx(0.3) and op["val_sensitivity"] == 1.0
    assert op["target_met"] is False and op["val_sensitivity_lower_bound"] == 0.89117
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "26 COVID images" in warning.getMessage() and "at least 59" in warning.getMessage()


def test_a_score_with_many_decimals_is_the_threshold_exactly() -> None:
    """Rounded up to 0.944226, the threshold would miss the positive it was chosen to catch."""
    positives = [0.9442259609341371, 0.96, 0.97, 0.98, 0.99] * 4 + [0.18]
    y_val, prob_val = labels(21, 3), probabilities(np.array([*positives, 0.5, 0.3, 0.1]))
    op = operating_point(y_val, prob_val, y_val, prob_val, BINARY, 0.95, "point")
    assert op["threshold"] == 0.9442259609341371 and op["val_sensitivity"] == round(20 / 21, 6)


def test_no_covid_in_validation_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no COVID images"):
        choose_threshold(np.zeros(4, bool), np.array([0.1, 0.2, 0.3, 0.4]), 0.95, "lower_bound")


# The simulation: COVID scores sigmoid(N(2, 1.5)), others sigmoid(N(-2, 1.5)), so the true
# sensitivity at any threshold t is P(N(2, 1.5) ≥ logit t). Sizes close to the real 4,199-image
# test split (about 540 COVID images): 300 COVID and 1,000 other images in validation, 600 and 2,000 in test.
TARGET, RESAMPLES, MEAN, SPREAD = 0.95, 400, 2.0, 1.5
VAL, TEST = (300, 1000), (600, 2000)


def draw(rng: np.random.Generator, positives: int, negatives: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a sample of ``positives`` COVID and ``negatives`` other images."""
    logits = np.concatenate([rng.normal(MEAN, SPREAD, positives), rng.normal(-MEAN, SPREAD, negatives)])
    return labels(positives, negatives), probabilities(1 / (1 + np.exp(-logits)))


def true_sensitivity(threshold: float) -> float:
    return float(stats.norm.sf(np.log(threshold / (1 - threshold)), MEAN, SPREAD))


def test_simulation_the_lower_bound_rule_keeps_the_target_on_new_test_sets() -> None:
    rng = np.random.default_rng(15)
    met = {"point": [], "lower_bound": []}
    held = {"point": [], "lower_bound": []}  # the true sensitivity at the threshold reaches the target
    for _ in range(RESAMPLES):
        (y_val, prob_val), (y_test, prob_test) = draw(rng, *VAL), draw(rng, *TEST)
        for rule in met:
            op = operating_point(y_val, prob_val, y_test, prob_test, BINARY, TARGET, rule)
            assert op["target_met"] is True
            met[rule].append(op["sensitivity"] >= TARGET)
            held[rule].append(true_sensitivity(op["threshold"]) >= TARGET)
    rates = {rule: float(np.mean(met[rule])) for rule in met}
    truth = {rule: float(np.mean(held[rule])) for rule in held}
    log.info("test sensitivity ≥ %s in %s of %d resamples; true sensitivity in %s", TARGET, rates, RESAMPLES, truth)
    assert 0.3 <= rates["point"] <= 0.7
    assert rates["lower_bound"] >= 0.9
    assert truth["lower_bound"] >= 0.9 and 0.3 <= truth["point"] <= 0.7
