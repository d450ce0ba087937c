"""Source labels → the classes of ``data.task``: built-in synonyms, then ``data.label_map``."""

from __future__ import annotations

import logging
import re
from typing import Any

import pandas as pd

from chestxray.errors import UserError
from chestxray.tasks import COVID, TASKS

log = logging.getLogger(__name__)

NO_LABEL = "(no label)"  # how an empty source label is reported
UNLABELLED = {"", "todo", "unknown", "inconclusive"}  # normalised labels that say "not labelled yet"

# Normalised source label → class; covers the Kaggle sets, ieee8023 and Actualmed spellings.
SYNONYMS = {
    "covid": COVID,
    "covid 19": COVID,
    "covid19": COVID,
    "sars cov 2": COVID,
    "lung opacity": "Lung_Opacity",
    "normal": "Normal",
    "no finding": "Normal",
    "viral pneumonia": "Viral Pneumonia",
}


def normalise(label: str) -> str:
    """Lower case, '_' and '-' as spaces, single spaces: 'COVID-19' → 'covid 19'."""
    return " ".join(re.sub(r"[_\-]", " ", label.lower()).split())


def to_class(source_label: str, label_map: dict[str, str | None]) -> str | None:
    """The class (one of ``CLASSES``) of ``source_label``, or None when it has none.

    ``label_map`` (params ``data.label_map``) wins, matched exactly or normalised; then the
    synonyms; then compound findings such as 'COVID-19, ARDS' or 'Pneumonia/Viral/COVID-19'
    (COVID if any part is, else Viral Pneumonia if a part is 'viral')."""
    mapped = _mapped(source_label, label_map)
    if mapped is not None:
        return mapped[0]
    if (norm := normalise(source_label)) in SYNONYMS:
        return SYNONYMS[norm]
    parts = {normalise(p) for p in re.split(r"[,/]", source_label)}
    if any(SYNONYMS.get(p) == COVID for p in parts):
        return COVID
    if "viral" in parts:
        return "Viral Pneumonia"
    return None


def task_label(source_label: str, task: str, label_map: dict[str, str | None]) -> str | None:
    """The label of ``source_label`` in ``task``, or None when it is left out.

    4class keeps the classes; 3class leaves out Lung_Opacity; binary is COVID vs the rest, where
    the rest is every other finding, except unlabelled ones ('todo', 'unknown', empty) and labels
    that ``label_map`` maps to null."""
    cls = to_class(source_label, label_map)
    if task == "binary":
        if cls is None and (normalise(source_label) in UNLABELLED or _mapped(source_label, label_map) is not None):
            return None
        return COVID if cls == COVID else "non-COVID"
    return cls if cls in TASKS[task] else None


def _mapped(source_label: str, label_map: dict[str, str | None]) -> tuple[str | None] | None:
    """``(class,)`` if ``label_map`` names ``source_label`` (exactly or normalised), else None."""
    if source_label in label_map:
        return (label_map[source_label],)
    by_norm = {normalise(k): v for k, v in label_map.items()}
    return (by_norm[normalise(source_label)],) if normalise(source_label) in by_norm else None


def apply_task(table: pd.DataFrame, task: str, label_map: dict[str, str | None]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Set ``label`` from ``source_label`` for ``task`` and drop the rows left out.

    Returns the table and a report: task name, classes present, the mapping used
    (source label → class, or None) and the images left out per source label."""
    sources = sorted(table["source_label"].astype(str).unique())
    mapping = {s: task_label(s, task, label_map) for s in sources}
    labelled = table.assign(label=table["source_label"].astype(str).map(mapping))
    kept = labelled[labelled["label"].notna()].reset_index(drop=True)
    left_out = labelled.loc[labelled["label"].isna(), "source_label"].value_counts().sort_index()
    excluded = {str(k) or NO_LABEL: int(v) for k, v in left_out.items()}
    present = [c for c in TASKS[task] if c in set(kept["label"])]
    if len(present) < 2:
        raise UserError(
            f"data.task {task}: the dataset's labels {sources} give {len(present)} of the classes "
            f"{list(TASKS[task])}; map them with data.label_map (e.g. {{'<label>': Normal}}) or pick another data.task"
        )
    for cls in TASKS[task]:
        if cls not in present:
            log.warning("data.task %s: no images of class %s in this dataset; training on %s", task, cls, present)
    for source, n in excluded.items():
        log.info(
            "left out %d image(s) labelled %r: not a class of data.task %s (add it to data.label_map to keep it)",
            n,
            source,
            task,
        )
    report = {
        "name": task,
        "classes": present,
        "mapping": {s or NO_LABEL: c for s, c in mapping.items()},
        "excluded": excluded,
    }
    return kept, report


def label_counts(table: pd.DataFrame, column: str = "label") -> dict[str, int]:
    """Rows per value of ``column``, sorted by value, as plain ints (JSON-ready)."""
    return {str(k): int(v) for k, v in table[column].value_counts().sort_index().items()}


def imbalance(counts: dict[str, int]) -> dict[str, Any]:
    """Largest / smallest non-empty class (None with fewer than 2 of them) and each class / the largest."""
    present = [n for n in counts.values() if n]
    largest = max(present, default=0)
    return {
        "max_to_min": round(largest / min(present), 3) if len(present) >= 2 else None,
        "to_largest": {c: round(n / largest, 3) if largest else 0.0 for c, n in counts.items()},
    }
