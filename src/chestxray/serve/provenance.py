"""What a model was trained on, as the model carries it and as every place that shows the model names
it (the predict command, the served model, the web page, the model card), and the warning a model
trained on synthetic data carries in all of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SYNTHETIC_WARNING = "synthetic data: not meaningful on real X-rays"
UNKNOWN = "unknown"


def training_data(source: str | None, dataset: str | None, data_version: str | None) -> dict[str, Any]:
    """The ``data`` entry of a model's settings: ``source`` (synthetic | kaggle | local), ``dataset``
    (the Kaggle slug or the local folder's or archive's name, else the source's name), ``data_version``
    (the split's hash) and ``synthetic``; what is not known is ``unknown``. Training records them in
    ``reports/download.json`` and as the run's ``data.source``, ``data.slug`` or ``data.name``, and
    ``data_version`` tags."""
    source = source or UNKNOWN
    return {
        "source": source,
        "dataset": dataset if dataset and source in ("kaggle", "local") else source,
        "data_version": data_version or UNKNOWN,
        "synthetic": source == "synthetic",
    }


def trained_on(data: Mapping[str, Any]) -> str:
    """One line naming the data: ``synthetic · data 4bdd84e5c77a``,
    ``kaggle owner/slug · data 4bdd84e5c77a``, or ``unknown``."""
    name = data["source"] if data["dataset"] == data["source"] else f"{data['source']} {data['dataset']}"
    return name if data["data_version"] == UNKNOWN else f"{name} · data {data['data_version']}"


def warning(data: Mapping[str, Any]) -> str:
    """``SYNTHETIC_WARNING`` for a model trained on synthetic data, else empty."""
    return SYNTHETIC_WARNING if data["synthetic"] else ""
