"""The split table (``data/processed/split.csv``) that the split stage writes and the cache reads,
and the data version: a hash of it, so of every image's bytes (``sha256``) too."""

from __future__ import annotations

import hashlib
from pathlib import Path

SPLITS = ("train", "val", "test")
COLUMNS = ("path", "label", "split", "group", "sha256")


def data_version(split_csv: Path) -> str:
    """The data version: the first 12 hex digits of the split table's sha256. The table holds each
    image's sha256, so an image changed under the same path is another data version."""
    return hashlib.sha256(Path(split_csv).read_bytes()).hexdigest()[:12]
