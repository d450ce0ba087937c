"""MLflow: the store, runs, what they carry, and the registry. With serving.py (the pyfunc model)
the only module that imports mlflow.

The store is ``MLFLOW_TRACKING_URI`` when set (e.g. a tracking server), else
``sqlite:///<repo root>/mlflow.db``; a SQLite store keeps artifacts in ``mlartifacts/`` beside it. The repo root is
``DVC_ROOT`` (set by DVC for every stage, also in queued experiments that run in a temp copy),
else the working directory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)

from chestxray.config import flatten

log = logging.getLogger(__name__)

EXPERIMENT = "chestxray"


def repo_root() -> Path:
    """The real repository root, also when DVC runs the stage in a temporary copy."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store at the repo root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def experiment_id() -> str:
    """Id of the experiment (``MLFLOW_EXPERIMENT_NAME``, default 'chestxray'), created on first use."""
    mlflow.set_tracking_uri(tracking_uri())
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=_artifact_location(tracking_uri()))
    except MlflowException:  # created meanwhile by a parallel queued experiment
        return mlflow.get_experiment_by_name(name).experiment_id


def _artifact_location(uri: str) -> str | None:
    """For a SQLite store, ``mlartifacts/`` beside the database file (an absolute path, so runs
    from queued experiments in temp copies land there too); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def run_tags(model: str, data_version: str, image_size: int) -> dict[str, str]:
    """Tags every training run carries: stage, backbone, data version and image size, git commit,
    DVC experiment."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    return {
        "stage": "train",
        "model": model,
        "data_version": data_version,
        "data.image_size": str(image_size),
        "mlflow.source.git.commit": commit,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
    }


@contextlib.contextmanager
def run(tags: Mapping[str, str] | None = None, run_id: str | None = None, name: str | None = None) -> Iterator[str]:
    """Start a run (named ``name``, else after ``DVC_EXP_NAME`` when DVC sets it), or resume ``run_id``."""
    exp = experiment_id()
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except MlflowException:
            log.warning("run %s is not in %s; starting a new run", run_id, tracking_uri())
            run_id = None
    name = (name or os.environ.get("DVC_EXP_NAME")) if run_id is None else None
    with mlflow.start_run(run_id=run_id, experiment_id=exp, run_name=name, tags=dict(tags or {})) as active:
        log.info("MLflow run %s in %s", active.info.run_id, tracking_uri())
        yield active.info.run_id


def log_params(params: Mapping[str, Any]) -> None:
    """Log params flattened with dots (lists as text)."""
    mlflow.log_params({k: str(v) for k, v in flatten(dict(params)).items()})


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set tags on the active run (values as text); unlike params, a tag may change."""
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_metrics(metrics: Mapping[str, Any], prefix: str = "", step: int | None = None) -> None:
    """Log every finite number in ``metrics`` (nested dicts flattened with dots) under ``prefix``."""
    numbers = {
        f"{prefix}{k}": float(v)
        for k, v in flatten(dict(metrics)).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    mlflow.log_metrics(numbers, step=step)


def log_artifacts(path: Path, artifact_path: str | None) -> None:
    """Copy the file ``path``, or every file of the folder ``path``, into the run's artifacts
    under ``artifact_path`` (None: at the top)."""
    if Path(path).is_file():
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
    else:
        mlflow.log_artifacts(str(path), artifact_path=artifact_path)


def log_data_records(records: Mapping[str, Mapping[str, Any]]) -> None:
    """Log the data stages' records (``{"download": {...}, "validate": {...}}``) as
    ``data/<name>.json`` artifacts, and where the data came from as ``data.*`` tags (source,
    Kaggle slug and version, archive sha256, task)."""
    for name, record in records.items():
        mlflow.log_dict(dict(record), f"data/{name}.json")
    download = records.get("download", {})
    tags = {f"data.{k}": str(download[k]) for k in ("source", "slug", "version", "sha256") if k in download}
    if "task" in records.get("validate", {}):
        tags["data.task"] = records["validate"]["task"]["name"]
    set_tags(tags)


def runs_for(data_version: str) -> list[dict[str, Any]]:
    """Every run of the experiment on ``data_version``: run_id, run_name, start_time, params, metrics, tags."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id()],
        filter_string=f"tags.data_version = '{data_version}'",
        output_format="list",
    )
    return [_record(r) for r in runs]


def get_run(run_id: str) -> dict[str, Any]:
    """One run as ``runs_for`` lists it."""
    return _record(_client().get_run(run_id))


def _record(r: Any) -> dict[str, Any]:
    """An MLflow run as a plain dict: run_id, run_name, start_time (ms), params, metrics, tags."""
    return {
        "run_id": r.info.run_id,
        "run_name": r.info.run_name,
        "start_time": r.info.start_time,
        "params": dict(r.data.params),
        "metrics": dict(r.data.metrics),
        "tags": dict(r.data.tags),
    }


def _client() -> MlflowClient:
    """A client on the project's store (its registry too)."""
    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient(tracking_uri())


def download_artifact(run_id: str, path: str, dst: Path) -> Path | None:
    """Download the run's artifact ``path`` into the folder ``dst``; None if the run has no such artifact."""
    try:
        return Path(_client().download_artifacts(run_id, path, str(dst)))
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise


def logged_model_id(run_id: str, name: str = "model") -> str | None:
    """Id of the newest model the run logged as ``name`` (MLflow 3 keeps logged models apart
    from the run's artifacts), or None if it logged none."""
    client = _client()
    found = client.search_logged_models(
        experiment_ids=[client.get_run(run_id).info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        max_results=1,
    )
    return found[0].model_id if found else None


def register_model(name: str, run_id: str, tags: Mapping[str, str]) -> tuple[int, bool] | None:
    """Version of the registered model ``name`` holding the model the run logged as ``model``
    (``runs:/<run_id>/model``): the version that already holds it, else a new one tagged
    ``tags``. Returns (version, created), or None if the run logged no model."""
    model_id = logged_model_id(run_id)
    if model_id is None:
        return None
    client, source = _client(), f"models:/{model_id}"
    versions = client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'")
    existing = [int(v.version) for v in versions if v.source == source]
    if existing:
        return min(existing), False
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    version = client.create_model_version(name, source, run_id, tags=dict(tags), model_id=model_id)
    return int(version.version), True


def alias_version(name: str, alias: str) -> dict[str, Any] | None:
    """The version of ``name`` that ``alias`` points to, as {version, run_id}; None if the
    registered model or the alias does not exist."""
    try:
        version = _client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in (ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)):
            return None
        raise
    return {"version": int(version.version), "run_id": version.run_id}


def set_alias(name: str, alias: str, version: int) -> None:
    """Point ``alias`` of the registered model ``name`` at ``version``."""
    _client().set_registered_model_alias(name, alias, str(version))
