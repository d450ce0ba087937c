"""Bring the dataset into data/raw/ as its source ships it: synthetic, Kaggle, or a local copy."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import requests

from chestxray import paths
from chestxray.config import DataSettings, ExternalDataset
from chestxray.data import synthetic
from chestxray.errors import UserError
from chestxray.io import atomic_path
from chestxray.records import write_record
from chestxray.resources import require_free_space

log = logging.getLogger(__name__)


KAGGLE_ENDPOINT_ENV = "KAGGLE_API_ENDPOINT"
CREDENTIALS_HELP = (
    "save kaggle.json (from https://www.kaggle.com/settings, 'Create New Token') in ~/.kaggle/"
    " (or $KAGGLE_CONFIG_DIR), or set "
    "KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN"
)


def fetch_dataset(data: DataSettings, seed: int, root: Path = Path(".")) -> dict[str, Any]:
    """Fill ``root/data/raw`` from ``data.source``, atomically; write where it came from and its size
    to ``root/reports/download.json`` (headline: ``metrics/download.json``).

    Kaggle downloads record ``slug``, ``version``, and the archive's ``size`` and ``sha256``; a
    local dataset records its ``name``, and an archive its ``size`` and ``sha256``."""
    check_source(data)
    raw_dir = root / paths.RAW_DIR
    origin: dict[str, Any] = {}
    with atomic_path(raw_dir, is_dir=True) as tmp:
        if data.source == "synthetic":
            synthetic.generate(tmp, data.synthetic.n_images, seed)
        elif data.source == "local":
            origin = ingest_local(Path(data.local.path).expanduser(), tmp)
        else:
            origin = download_kaggle(data.kaggle.dataset, tmp, root / paths.DOWNLOADS_DIR)
    files = [p for p in raw_dir.rglob("*") if p.is_file()]
    metrics = {"source": data.source, **origin, "files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    write_record("download", metrics, root / paths.DOWNLOAD_JSON, root / paths.DOWNLOAD_METRICS)
    log.info("%s dataset in %s: %d files, %.1f MB", data.source, raw_dir, metrics["files"], metrics["bytes"] / 1e6)
    return metrics


def check_source(data: DataSettings) -> None:
    """Fail in one line if ``data.source`` cannot work as set: a Kaggle name that is not ``owner/slug``,
    a local path that is neither a folder nor a .zip archive (checked before anything is written)."""
    if data.source == "kaggle":
        _dataset_parts(data.kaggle.dataset)
    elif data.source == "local":
        local_kind(Path(data.local.path).expanduser())


def check_external(entry: ExternalDataset, root: Path = Path(".")) -> None:
    """The same for an ``evaluate.external`` entry: a Kaggle name that is not ``owner/slug``, a local
    path (relative to ``root``) that is neither a folder nor a .zip archive."""
    if entry.source == "kaggle":
        _dataset_parts(entry.dataset, f"{entry.key}: dataset")
    else:
        local_kind(external_path(entry, root), f"{entry.key}: path")


def external_path(entry: ExternalDataset, root: Path) -> Path:
    """A local ``evaluate.external`` entry's path: ``~`` expanded, relative to the repository ``root``."""
    path = Path(entry.path).expanduser()
    return path if path.is_absolute() else root / path


def local_kind(source: Path, key: str = "data.local.path") -> str:
    """``'folder'`` or ``'zip'``; UserError naming ``key`` otherwise."""
    if not source.exists():
        raise UserError(f"{key}: {source} does not exist; point it to a dataset folder or .zip archive")
    if source.is_dir():
        return "folder"
    if not zipfile.is_zipfile(source):
        raise UserError(f"{key}: {source} is neither a folder nor a .zip archive")
    return "zip"


def ingest_local(source: Path, dest: Path) -> dict[str, Any]:
    """Copy a dataset folder, or safely extract a .zip archive, into ``dest``. Returns its ``name``
    (the folder's or the archive's file name, which the model names as its dataset) and an archive's
    size and sha256."""
    if local_kind(source) == "folder":
        size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
        require_free_space(dest, size, f"a copy of {source}", "free space, or point data.local.path elsewhere")
        shutil.copytree(source, dest, dirs_exist_ok=True)
        return {"name": source.name}
    extract_zip(source, dest)
    return {"name": source.name, "size": source.stat().st_size, "sha256": sha256(source)}


def extract_zip(archive: Path, dest: Path, fix: str = "download it again") -> None:
    """Extract ``archive`` into ``dest`` after checking every member: no absolute paths, no '..',
    no symlinks, every member readable (CRC checked). Errors end with ``fix``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                parts = PurePosixPath(info.filename.replace("\\", "/")).parts
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                if info.filename.startswith(("/", "\\")) or ".." in parts or ":" in info.filename or is_link:
                    raise UserError(
                        f"{archive}: unsafe member '{info.filename}' (absolute path, '..' or link); refusing to extract"
                    )
            size = sum(info.file_size for info in zf.infolist())
            require_free_space(dest, size, f"extracting {archive}", "free space and run again")
            bad = zf.testzip()
            if bad is not None:
                raise UserError(f"{archive}: member '{bad}' is corrupt; {fix}")
            zf.extractall(dest)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # zlib: a damaged deflate stream
        raise UserError(f"{archive}: not a valid zip archive ({exc}); {fix}") from None


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_kaggle(dataset: str, dest: Path, downloads_dir: Path, retries: int = 5) -> dict[str, Any]:
    """Download ``owner/slug`` (latest version) or ``owner/slug/<version>`` with the official
    ``kaggle`` client, verify and extract it into ``dest``; return slug, version, size, sha256.

    The archive downloads to ``downloads_dir/<owner>--<slug>--v<version>.zip.part``, which is kept
    if the transfer is cut so that the next run resumes it (HTTP Range), and is renamed without
    ``.part`` when complete; the archive is deleted once extracted, or when it is corrupt."""
    owner, slug, version = _dataset_parts(dataset)
    downloads_dir.mkdir(parents=True, exist_ok=True)
    archive = partial = None
    with _kaggle_endpoint() as endpoint:
        api = _kaggle_api()
        from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest, ApiGetDatasetRequest

        try:
            with api.build_kaggle_client() as client:
                datasets = client.datasets.dataset_api_client
                if version is None:
                    version = datasets.get_dataset(_request(ApiGetDatasetRequest, owner, slug)).current_version_number
                archive = downloads_dir / f"{owner}--{slug}--v{version}.zip"
                partial = archive.with_name(archive.name + ".part")
                if archive.exists():
                    log.info("reusing the complete download %s", archive)
                else:
                    log.info("downloading Kaggle dataset %s/%s version %d from %s", owner, slug, version, endpoint)
                    response = datasets.download_dataset(_request(ApiDownloadDatasetRequest, owner, slug, version))
                    api.download_file(
                        response, str(partial), client.http_client(), quiet=False, resume=True, max_retries=retries
                    )
                    partial.replace(archive)
        except requests.HTTPError as exc:
            raise _refusal(exc, dataset, endpoint) from None
        except (OSError, ValueError) as exc:  # refused, cut, timed out, or short of the announced size
            if partial is None or not partial.exists():
                raise UserError(
                    f"cannot reach the Kaggle API at {endpoint} ({exc.__class__.__name__}); check your network"
                    f" (or {KAGGLE_ENDPOINT_ENV}) and run again"
                ) from None
            raise UserError(
                f"Kaggle download of '{dataset}' was cut ({exc.__class__.__name__});"
                f" {partial.stat().st_size} bytes are "
                f"kept in {partial} and the next run resumes from there; check your network and run again"
            ) from None
    origin = {"slug": f"{owner}/{slug}", "version": version, "size": archive.stat().st_size, "sha256": sha256(archive)}
    try:
        extract_zip(archive, dest, fix="it was deleted, so the next run downloads it afresh")
    except UserError:
        archive.unlink()
        raise
    archive.unlink()
    log.info("extracted %s/%s v%d (%d bytes, sha256 %s)", owner, slug, version, origin["size"], origin["sha256"])
    return origin


def _request(kind: type, owner: str, slug: str, version: int | None = None) -> Any:
    """A kagglesdk request object for one dataset (version only where the request has one)."""
    request = kind()
    request.owner_slug, request.dataset_slug = owner, slug
    if version is not None:
        request.dataset_version_number = version
    return request


def _dataset_parts(dataset: str, key: str = "data.kaggle.dataset") -> tuple[str, str, int | None]:
    parts = dataset.strip("/").split("/")
    if len(parts) == 4 and parts[2] == "versions":  # as in the dataset's URL
        parts = [parts[0], parts[1], parts[3]]
    if len(parts) not in (2, 3) or not all(parts) or (len(parts) == 3 and not parts[2].isdigit()):
        raise UserError(f"{key}: '{dataset}' is not 'owner/slug' or 'owner/slug/<version>' as in the dataset's URL")
    return parts[0], parts[1], int(parts[2]) if len(parts) == 3 else None


@contextlib.contextmanager
def _kaggle_endpoint() -> Iterator[str]:
    """The Kaggle API endpoint: ``$KAGGLE_API_ENDPOINT`` (a mirror, or a test server) or the
    client's own production endpoint. The client has no setting for it, so its production entry
    in ``kagglesdk.kaggle_env`` is pointed there for the duration of the download."""
    from kagglesdk import kaggle_env

    default = kaggle_env.get_endpoint(kaggle_env.KaggleEnv.PROD)
    override = os.environ.get(KAGGLE_ENDPOINT_ENV, "").strip().rstrip("/")
    if override and not override.startswith(("http://", "https://")):
        raise UserError(f"{KAGGLE_ENDPOINT_ENV}={override!r} is not an http(s) URL; unset it to use {default}")
    kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.PROD] = override or default
    try:
        yield override or default
    finally:
        kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.PROD] = default


def _kaggle_api() -> Any:
    """An authenticated ``KaggleApi``. Without credentials the client prints 18 lines of its own
    sign-in help (its CLI's ways, not the project's) and calls exit(1), and importing it already
    authenticates once and prints them: both run with its standard output captured and dropped, so
    the one line below is all that shows."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except SystemExit:
        raise UserError(f"Kaggle credentials not found: {CREDENTIALS_HELP}; or use data.source: synthetic") from None
    except requests.RequestException as exc:  # KAGGLE_API_TOKEN is checked online
        raise UserError(f"Kaggle sign-in failed ({exc.__class__.__name__}); check your network and the token") from None
    return api


def _refusal(exc: requests.HTTPError, dataset: str, endpoint: str) -> UserError:
    """One line for an HTTP error answer of the Kaggle API."""
    status = exc.response.status_code if exc.response is not None else 0
    if status == 401:
        return UserError(
            f"Kaggle refused the credentials (HTTP 401) at {endpoint}: they are wrong or revoked; {CREDENTIALS_HELP}"
        )
    if status == 403:
        return UserError(
            f"Kaggle denied access to '{dataset}' (HTTP 403): open the dataset's page on kaggle.com with this "
            "account and accept its terms, or check that it is public"
        )
    if status == 404:
        return UserError(
            f"Kaggle dataset '{dataset}' not found (HTTP 404); set data.kaggle.dataset to 'owner/slug' as in its URL"
        )
    return UserError(f"Kaggle API at {endpoint} answered HTTP {status} for '{dataset}'; try again later")
