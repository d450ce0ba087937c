"""Bring the dataset into data/raw/ as its source ships it: synthetic, Kaggle, or a local copy."""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from chestxray import synthetic
from chestxray.config import DataConfig
from chestxray.errors import UserError
from chestxray.io import atomic_path, write_json

log = logging.getLogger(__name__)


def fetch_dataset(data: DataConfig, seed: int, raw_dir: Path, metrics_json: Path) -> dict[str, Any]:
    """Fill ``raw_dir`` from ``data.source``, atomically; write file count and size."""
    with atomic_path(raw_dir, is_dir=True) as tmp:
        if data.source == "synthetic":
            synthetic.generate(tmp, data.synthetic_images, seed)
        elif data.source == "local":
            ingest_local(Path(data.local_path).expanduser(), tmp)
        else:
            download_kaggle(data.kaggle_dataset, tmp)
    files = [p for p in raw_dir.rglob("*") if p.is_file()]
    metrics = {"source": data.source, "files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    write_json(metrics_json, metrics)
    log.info("%s dataset in %s: %d files, %.1f MB", data.source, raw_dir, metrics["files"], metrics["bytes"] / 1e6)
    return metrics


def ingest_local(source: Path, dest: Path) -> None:
    """Copy a dataset folder, or safely extract a .zip archive, into ``dest``."""
    if not source.exists():
        raise UserError(f"data.local.path: {source} does not exist; point it to a dataset folder or .zip archive")
    if source.is_dir():
        shutil.copytree(source, dest, dirs_exist_ok=True)
    elif zipfile.is_zipfile(source):
        extract_zip(source, dest)
    else:
        raise UserError(f"data.local.path: {source} is neither a folder nor a .zip archive")


def extract_zip(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest`` after checking every member: no absolute paths, no '..',
    no symlinks, every member readable (CRC checked)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                parts = PurePosixPath(info.filename.replace("\\", "/")).parts
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                if info.filename.startswith(("/", "\\")) or ".." in parts or ":" in info.filename or is_link:
                    raise UserError(f"{archive}: unsafe member '{info.filename}' (absolute path, '..' or link); refusing to extract")
            bad = zf.testzip()
            if bad is not None:
                raise UserError(f"{archive}: member '{bad}' is corrupt; download the archive again")
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise UserError(f"{archive}: not a valid zip archive ({exc}); download it again") from None


def download_kaggle(dataset: str, dest: Path) -> None:
    """Download ``owner/slug`` with the official ``kaggle`` client and extract it into ``dest``."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
    except SystemExit:  # the client calls exit(1) when it finds no credentials
        raise UserError(
            "Kaggle credentials not found: save kaggle.json in ~/.kaggle/ or set KAGGLE_USERNAME and "
            "KAGGLE_KEY (or KAGGLE_API_TOKEN); or use data.source: synthetic"
        ) from None
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".kaggle-") as tmp:
        log.info("downloading Kaggle dataset %s", dataset)
        try:
            api.dataset_download_files(dataset, path=tmp, unzip=False, quiet=False)
        except Exception as exc:
            raise UserError(f"Kaggle download of '{dataset}' failed: {exc}; check data.kaggle.dataset and your network") from None
        archives = sorted(Path(tmp).glob("*.zip"))
        if not archives:
            raise UserError(f"Kaggle download of '{dataset}' produced no .zip archive")
        extract_zip(archives[0], dest)
