"""Each stage's full record and its headline.

The record (``reports/<stage>.json``, ``paths.*_JSON``) holds everything a stage measured and is
what the later stages, the model card and the tests read. The headline (``metrics/<stage>.json``,
``paths.*_METRICS``, a DVC metric) holds the few numbers compared across experiments, under the
same keys as in the record, so that ``dvc exp show`` and ``dvc metrics show`` stay readable.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chestxray.io import write_json

HEADLINES: dict[str, tuple[str, ...]] = {  # stage → dotted keys of its record that its headline keeps
    "download": ("source", "files"),
    "validate": ("gate.passed", "gate.reject_fraction"),
    "split": ("groups",),  # the data version is evaluate's: one column of that name in dvc exp show
    "train": ("best_epoch", "best_val_macro_f1", "epochs_run", "train_seconds"),
    "evaluate": (
        "data_version",
        "accuracy",
        "macro_f1",
        "ci.macro_f1.low",
        "ci.macro_f1.high",
        "operating_point.sensitivity",  # COVID, at the threshold served
        "operating_point.specificity",
    ),
    "audit": ("audit.occluded.macro_f1", "audit.gradcam_in_lungs.overall", "leakage.nearest_train_distance.min"),
    "compare": ("n_runs", "champion.version", "champion.model", "champion.moved"),
}


def headline(record: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The dotted ``keys`` of ``record``, nested as in it; a key under a section that is None (no
    lung masks, no champion yet) is left out."""
    kept: dict[str, Any] = {}
    for key in keys:
        *sections, name = key.split(".")
        value = record
        for section in sections:
            value = value[section]
            if value is None:
                break
        else:
            target = kept
            for section in sections:
                target = target.setdefault(section, {})
            target[name] = value[name]
    return kept


def write_record(stage: str, record: dict[str, Any], record_path: Path, metrics_path: Path) -> None:
    """Write ``record`` to ``record_path`` and its headline (``HEADLINES[stage]``) to ``metrics_path``."""
    write_json(record_path, record)
    write_json(metrics_path, headline(record, HEADLINES[stage]))
