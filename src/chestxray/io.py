"""Atomic file and folder writes: write to a temp path beside the target, then rename."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
STALE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)-)?")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temp path next to ``target``; on success rename it onto ``target``.

    On error the temp path is removed and ``target`` is left as it was. For folders the old
    folder is moved aside first and deleted only after the new one is in place. Temp names
    (``.<name>.tmp-<pid>-*``, git-ignored) carry the writer's pid, so the leftovers of a killed
    writer are removed by the next one; files and folders get the permissions of the umask. A
    permission or disk-full error names ``target``.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(target)
        prefix = f".{target.name}.tmp-{os.getpid()}-"
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
            tmp.chmod(0o777 & ~UMASK)
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
            os.close(fd)
            tmp = Path(name)
            tmp.chmod(0o666 & ~UMASK)
    except OSError as exc:
        _raise_naming(exc, target)
        raise
    try:
        yield tmp
        if is_dir and target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError):
            _raise_naming(exc, target)
        raise


def _remove_stale(target: Path) -> None:
    """Remove the temp and set-aside copies of ``target`` left by writers that no longer run."""
    for path in target.parent.glob(f".{glob.escape(target.name)}.*-*"):
        match = STALE.match(path.name)
        if match and match["name"] == target.name and not _alive(match["pid"]):
            _remove(path)


def _alive(pid: str | None) -> bool:
    """Whether the process ``pid`` runs (a name without a pid is from an older writer: not running)."""
    if pid is None:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _raise_naming(exc: OSError, target: Path) -> None:
    """Raise a disk-full or permission error again naming ``target``, if it named none or a temp path."""
    unnamed = exc.filename is None or STALE.match(Path(str(exc.filename)).name)
    if exc.errno in DISK_FULL | NOT_WRITABLE and unnamed:
        raise type(exc)(exc.errno, os.strerror(exc.errno), str(target)) from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write ``frame`` as CSV without its index, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
