"""Audit runs: trained and scored without the image's centre (``data.occlude`` > 0, tag ``audit:
border-only``). They are ranked on the leaderboard but never become champion; the best of them on a
data version is quoted on the model cards of that data version (the audit stage writes it, compare
refreshes it on the champion's card when a better one arrives later)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chestxray import tracking
from chestxray.judge import model_card

log = logging.getLogger(__name__)

CARD = "model_card.md"  # the card's artifact path on its run


def is_audit(run: Mapping[str, Any]) -> bool:
    """Whether the run (``tracking.runs_for``'s record) is a border-only audit run."""
    return run["tags"].get(tracking.AUDIT_TAG) == tracking.BORDER_ONLY


def best_border_only(data_version: str, exclude: str | None = None) -> dict[str, Any] | None:
    """The border-only audit run on ``data_version`` (other than ``exclude``) with the best validation
    macro-F1 (chosen on validation; its test score is what a card quotes): run_id, run_name, model,
    occlude, validation, test, test_accuracy. None if there is none."""
    runs = [
        r
        for r in tracking.runs_for(data_version)
        if is_audit(r) and "val.macro_f1" in r["metrics"] and r["run_id"] != exclude
    ]
    if not runs:
        return None
    best = max(runs, key=lambda r: (r["metrics"]["val.macro_f1"], -r["start_time"]))
    m = best["metrics"]
    return {
        "run_id": best["run_id"],
        "run_name": best["run_name"],
        "model": best["tags"].get("model"),
        "occlude": float(best["tags"]["data.occlude"]),
        "validation": m["val.macro_f1"],
        "test": m.get("test.macro_f1"),
        "test_accuracy": m.get("test.accuracy"),
    }


def refresh_card(run_id: str, data_version: str) -> bool:
    """Rewrite the border-only paragraph of run ``run_id``'s logged model card with the best border-only
    run on ``data_version`` now; True if the card changed. A run without a card, or with a card from
    before the shortcut audit, is left as it is."""
    run = tracking.get_run(run_id)
    if run is None or is_audit(run) or "test.macro_f1" not in run["metrics"]:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        card = tracking.download_artifact(run_id, CARD, Path(tmp))
        if card is None:
            return False
        text = card.read_text(encoding="utf-8")
        k = sum(1 for key in run["metrics"] if key.startswith("test.per_class.") and key.endswith(".support"))
        block = model_card.border_only_block(best_border_only(data_version), run["metrics"]["test.macro_f1"], k)
        new = model_card.replace_block(text, block)
        if new is None or new == text:
            return False
        card.write_text(new, encoding="utf-8")
        tracking.log_artifact_to(run_id, card)
    log.info("run %s's model card now quotes the best border-only audit run on data version %s", run_id, data_version)
    return True
