"""The decision rule: a case is called COVID when p(COVID) reaches the threshold of the operating
point (chosen on the validation split by ``judge.operating_point``), else the most probable other
class. Evaluation, the served model, the predict command and the web page all decide through it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chestxray.tasks import COVID


def decide(prob: np.ndarray, classes: Sequence[str], threshold: float) -> np.ndarray:
    """Class indices at the operating point: COVID when p(COVID) ≥ ``threshold``, else the most
    probable other class (for a binary task: the decision threshold)."""
    positive = list(classes).index(COVID)
    others = np.where(np.arange(len(classes)) == positive, -np.inf, prob)
    return np.where(prob[:, positive] >= threshold, positive, others.argmax(axis=1))
