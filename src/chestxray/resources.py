"""Disk budgets: the bytes a stage is about to write, compared with the free space before it starts."""

from __future__ import annotations

import shutil
from pathlib import Path

from chestxray.errors import UserError


def human(n: float) -> str:
    """A byte count for people: ``'6.9 TB'``, ``'512.0 MB'``."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def require_free_space(path: Path, needed: int, what: str, fix: str) -> None:
    """Raise a one-line UserError when writing ``needed`` bytes of ``what`` under ``path`` would not fit."""
    free = free_bytes(path)
    if needed > free:
        raise UserError(f"{path}: {what} needs {human(needed)} but {human(free)} is free on its disk; {fix}")
