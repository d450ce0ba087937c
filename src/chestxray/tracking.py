"""MLflow: the store, runs, what they carry, and the registry. With serving.py (the pyfunc model)
the only module that imports mlflow.

The store is ``MLFLOW_TRACKING_URI`` when set (e.g. a tracking server), else
``sqlite:///<repo root>/mlflow.db``; a SQLite store keeps artifacts in ``mlartifacts/`` beside it. The repo root is
``DVC_ROOT`` (set by DVC for every stage, also in queued experiments that run in a temp copy),
else the working directory.

A run ends with the truth: a new run FINISHED, KILLED (interrupted) or FAILED; a resumed run (e.g.
evaluate adding to the training run) as it was before it was resumed, whatever happened. Every run
names the process that holds it (``owner.*`` tags; while resumed, the ``resumed`` tag), so a run
left RUNNING by a process that died (kill -9) is ended by the next stage on the same host.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus, RunInfo, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)

from chestxray.config import flatten
from chestxray.errors import UserError

log = logging.getLogger(__name__)

EXPERIMENT = "chestxray"
OWNER = "owner."  # tags owner.host, owner.pid, owner.pid_start: the process that started the run
METRIC_KEY_REFUSED = re.compile(r"[^\w./\- :]")  # MLflow's metric keys allow word characters and . / - space :
AUDIT_TAG, BORDER_ONLY = "audit", "border-only"  # an audit run: trained and scored without the image's centre
# The lock on a registered model's champion (``champion_lock``): a registered model of this name suffix
LOCK_SUFFIX = ".lock"
LOCK_WAIT, LOCK_STALE, LOCK_POLL = 600.0, 900.0, 0.5  # seconds: give up waiting, break a lock this old, poll
RESUMED = "resumed"  # while a run is resumed: JSON of the resuming process and the run's status and end time before
HEADLINE_METRICS = ("val.macro_f1", "test.macro_f1", "test.roc_auc_macro", "test.covid_sensitivity", "test.ece")
# Says the experiment is for model training (MLflow 3.17's UI itself opens an experiment as its
# GenAI/Model training switch says, kept per browser; ``ui_url`` asks for model training).
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# A view of the runs table, applied by the UI when its URL says ``viewStateShareKey=<RUNS_VIEW>`` (as
# the UI's own "Share" button stores views): training runs, the headline metrics as columns. A fresh
# browser otherwise shows no metric column, and no experiment tag changes that default.
RUNS_VIEW = "headline"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW}"
_COLUMNS = [f"metrics.`{m}`" for m in HEADLINE_METRICS]
EXPERIMENT_TAGS = {
    EXPERIMENT_KIND_TAG: MODEL_TRAINING,
    RUNS_VIEW_TAG: json.dumps(
        {"searchFilter": "tags.stage = 'train'", "selectedColumns": _COLUMNS, "columnOrder": _COLUMNS}
    ),
}


def repo_root() -> Path:
    """The real repository root, also when DVC runs the stage in a temporary copy."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store at the repo root. Outside the project (not
    under DVC, and neither mlflow.db nor dvc.yaml in the current folder) a UserError: MLflow would
    create an empty store wherever ``predict`` was run."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    root = repo_root()
    store = root / "mlflow.db"
    if not (os.environ.get("DVC_ROOT") or store.exists() or (root / "dvc.yaml").exists()):
        raise UserError(
            f"{store}: no MLflow store here and {root} is not the project (no dvc.yaml); run from the project's"
            " root, or set MLFLOW_TRACKING_URI to its store (sqlite:///<project>/mlflow.db)"
        )
    return f"sqlite:///{store}"


def experiment_id() -> str:
    """Id of the experiment (``MLFLOW_EXPERIMENT_NAME``, default 'chestxray'), created on first use
    with ``EXPERIMENT_TAGS``; an existing experiment gets those it lacks (``_tag_experiment``)."""
    mlflow.set_tracking_uri(tracking_uri())
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        try:
            return mlflow.create_experiment(
                name, artifact_location=_artifact_location(tracking_uri()), tags=EXPERIMENT_TAGS
            )
        except MlflowException:  # created meanwhile by a parallel queued experiment
            found = mlflow.get_experiment_by_name(name)
    _tag_experiment(found.experiment_id, found.tags)
    return found.experiment_id


def _tag_experiment(exp: str, tags: Mapping[str, str]) -> None:
    """Give experiment ``exp`` the ``EXPERIMENT_TAGS`` it lacks, and the project's runs view when it
    differs (the UI reads it at each visit); a kind the user chose in the UI is kept."""
    for key, value in EXPERIMENT_TAGS.items():
        if key not in tags or (key == RUNS_VIEW_TAG and tags[key] != value):
            _client().set_experiment_tag(exp, key, value)


def ui_url(base: str | None = None, exp: str | None = None) -> str:
    """The runs table of experiment ``exp`` (default: ``experiment_id()``) with the headline metrics as
    columns, in the MLflow UI at ``base`` (default: the tracking server, or ``mlflow ui``'s
    http://127.0.0.1:5000 for a SQLite store)."""
    uri = tracking_uri()
    base = base or (uri if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000")
    query = f"workflowType=machine_learning&viewStateShareKey={RUNS_VIEW}"
    return f"{base.rstrip('/')}/#/experiments/{exp or experiment_id()}/runs?{query}"


def _artifact_location(uri: str) -> str | None:
    """For a SQLite store, ``mlartifacts/`` beside the database file (an absolute path, so runs
    from queued experiments in temp copies land there too); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def run_tags(model: str, data_version: str, image_size: int, occlude: float = 0.0) -> dict[str, str]:
    """Tags every training run carries: stage, backbone, data version, image size and occlusion, git
    commit, DVC experiment; and ``audit: border-only`` on a run that never saw the image's centre
    (``data.occlude`` > 0): an audit run, which never becomes champion."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    return {
        "stage": "train",
        "model": model,
        "data_version": data_version,
        "data.image_size": str(image_size),
        "data.occlude": str(occlude),
        **({AUDIT_TAG: BORDER_ONLY} if occlude else {}),
        "mlflow.source.git.commit": commit,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
    }


@contextlib.contextmanager
def run(tags: Mapping[str, str] | None = None, run_id: str | None = None, name: str | None = None) -> Iterator[str]:
    """Start a run named by ``run_name`` (``name`` says what ran, e.g. 'eda'; default: the backbone),
    or resume ``run_id``. A new run ends FINISHED, KILLED on KeyboardInterrupt, FAILED on any other
    exception; a resumed run ends with the status and end time it had before. First ends the runs
    that dead processes of this host left RUNNING (``_reap_orphans``). A store on a full disk
    raises OSError(ENOSPC) naming the database, which the stage edge reports in one line."""
    with _disk_full_as_os_error():
        yield from _run(tags, run_id, name)


@contextlib.contextmanager
def _disk_full_as_os_error() -> Iterator[None]:
    """SQLite's 'database or disk is full' (an MlflowException) → OSError(ENOSPC) naming the store.
    Around every write to the store: ``run`` (and all it logs) and the registry's writes."""
    try:
        yield
    except MlflowException as exc:
        if "database or disk is full" not in str(exc):
            raise
        store = tracking_uri().removeprefix("sqlite:///")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), store) from None


def _run(tags: Mapping[str, str] | None, run_id: str | None, name: str | None) -> Iterator[str]:
    """The body of ``run``."""
    exp = experiment_id()
    client = _client()
    _reap_orphans(client, exp)
    before = _resumable(client, run_id)
    run_id = _start(client, exp, before, dict(tags or {}), name)
    try:
        log.info("MLflow run %s in %s; runs table: %s", run_id, tracking_uri(), ui_url(exp=exp))
        yield run_id
    except KeyboardInterrupt:
        _end(client, before, RunStatus.KILLED)
        raise
    except BaseException:
        _end(client, before, RunStatus.FAILED)
        raise
    _end(client, before, RunStatus.FINISHED)


def run_name(tags: Mapping[str, str], what: str | None = None) -> str:
    """``<what>[-<data version>]-<DVC experiment name or 8 hex>``: ``what`` defaults to the backbone
    (tag ``model``), else the stage; the hex digits are drawn from ``secrets`` (MLflow's own names
    come from the ``random`` module, which the global seed makes repeat), so plain ``dvc repro``
    runs differ too."""
    what = what or tags.get("model") or tags.get("stage") or "run"
    suffix = os.environ.get("DVC_EXP_NAME") or secrets.token_hex(4)
    return "-".join(part for part in (what, tags.get("data_version"), suffix) if part)


def _resumable(client: MlflowClient, run_id: str | None) -> RunInfo | None:
    """The stored state of the run to resume; None (start a new run) if there is none."""
    if run_id is None:
        return None
    try:
        return client.get_run(run_id).info
    except MlflowException:
        log.warning("run %s is not in %s; starting a new run", run_id, tracking_uri())
        return None


def _start(client: MlflowClient, exp: str, before: RunInfo | None, tags: dict[str, str], name: str | None) -> str:
    """Start a new run tagged with this process as its owner, or resume ``before`` with the
    ``resumed`` tag (set first, so a run RUNNING for this process always says what to restore)."""
    if before is None:
        tags |= {OWNER + k: v for k, v in _owner().items()}
        return mlflow.start_run(experiment_id=exp, run_name=run_name(tags, name), tags=tags).info.run_id
    resumed = {**_owner(), "status": before.status, "end_time": before.end_time}
    client.set_tag(before.run_id, RESUMED, json.dumps(resumed))
    return mlflow.start_run(run_id=before.run_id, experiment_id=exp, tags=tags).info.run_id


def _end(client: MlflowClient, before: RunInfo | None, status: int) -> None:
    """End the active run with ``status``; a resumed run then gets its status and end time back."""
    try:
        mlflow.end_run(RunStatus.to_string(status))
    finally:
        if before is not None:
            _restore(client, before.run_id, before.status, before.end_time)


def _restore(client: MlflowClient, run_id: str, status: str, end_time: int | None) -> None:
    """Put a resumed run back as it was and drop its ``resumed`` tag (already gone: another stage
    restored it meanwhile). A run resumed while RUNNING has no end time to give back: it gets now."""
    client.set_terminated(run_id, status, end_time=end_time)
    try:
        client.delete_tag(run_id, RESUMED)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise


def _reap_orphans(client: MlflowClient, exp: str) -> None:
    """End the runs of ``exp`` that a process of this host left RUNNING and that no longer
    exists: KILLED if it started the run, as before if it had resumed it. Runs of other hosts,
    of live processes and without owner tags are left alone."""
    running = mlflow.search_runs(
        experiment_ids=[exp], filter_string="attributes.status = 'RUNNING'", output_format="list"
    )
    for found in running:
        tags = found.data.tags
        resumed = json.loads(tags[RESUMED]) if RESUMED in tags else None
        owner = resumed or {k.removeprefix(OWNER): v for k, v in tags.items() if k.startswith(OWNER)}
        if not _is_dead(owner):
            continue
        if resumed is None:
            client.set_terminated(found.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            ended = "KILLED"
        else:
            _restore(client, found.info.run_id, resumed["status"], resumed["end_time"])
            ended = f"back to {resumed['status']} (it had been resumed)"
        log.info(
            "run %s (%s) was left RUNNING by process %s, which is gone: %s",
            found.info.run_id,
            found.info.run_name,
            owner["pid"],
            ended,
        )


def _owner() -> dict[str, str]:
    """This process: host name, pid and start time (empty where /proc cannot tell it)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "pid_start": _process_start(os.getpid()) or ""}


def _is_dead(owner: Mapping[str, Any]) -> bool:
    """Whether ``owner`` was a process of this host that is gone (or whose pid now belongs to a
    later process). False when it cannot be told: another host, or no start time recorded."""
    pid = str(owner.get("pid", ""))
    if owner.get("host") != socket.gethostname() or not owner.get("pid_start") or not pid.isdigit():
        return False
    return _process_start(int(pid)) != owner["pid_start"]


def _process_start(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks after boot, /proc/<pid>/stat field 22); None if
    there is no such process, it has exited (a zombie), or there is no /proc (not Linux)."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text(encoding="utf-8")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name before it may hold spaces and ')'
    return None if fields[0] in ("Z", "X") else fields[19]


def log_params(params: Mapping[str, Any]) -> None:
    """Log params flattened with dots (lists as text)."""
    mlflow.log_params({k: str(v) for k, v in flatten(dict(params)).items()})


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set tags on the active run (values as text); unlike params, a tag may change."""
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_metrics(metrics: Mapping[str, Any], prefix: str = "", step: int | None = None) -> None:
    """Log every finite number in ``metrics`` (nested dicts flattened with dots) under ``prefix``; a
    character MLflow refuses in a key (e.g. the comma of a source label 'COVID-19, ARDS') becomes ``_``."""
    numbers = {
        METRIC_KEY_REFUSED.sub("_", f"{prefix}{k}"): float(v)
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
    Kaggle slug and version, a local dataset's name, archive sha256, task)."""
    for name, record in records.items():
        mlflow.log_dict(dict(record), f"data/{name}.json")
    download = records.get("download", {})
    tags = {f"data.{k}": str(download[k]) for k in ("source", "slug", "name", "version", "sha256") if k in download}
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


def get_run(run_id: str) -> dict[str, Any] | None:
    """One run as ``runs_for`` lists it; None if the store has no run ``run_id``."""
    try:
        return _record(_client().get_run(run_id))
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise


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


def log_artifact_to(run_id: str, path: Path) -> None:
    """Copy the file ``path`` into the artifacts of run ``run_id`` (at the top), replacing one of the
    same name, without resuming the run."""
    _client().log_artifact(run_id, str(path))


def logged_model_ids(run_id: str, name: str = "model") -> list[tuple[str, str]]:
    """(id, status) of the models the run logged as ``name`` (MLflow 3 keeps logged models apart
    from the run's artifacts), newest first; deleted ones are not listed."""
    client = _client()
    found = client.search_logged_models(
        experiment_ids=[client.get_run(run_id).info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
    )
    return [(m.model_id, str(m.status)) for m in found]


def logged_model_id(run_id: str, name: str = "model") -> str | None:
    """Id of the newest READY model the run logged as ``name``, or None. (A PENDING or FAILED one
    is half-logged. Filtered here: MLflow 3.17's SQL store compares ``status = 'READY'`` with the
    number it stores, so that filter matches nothing.)"""
    return next((i for i, status in logged_model_ids(run_id, name) if status == LoggedModelStatus.READY), None)


def delete_logged_model(model_id: str) -> None:
    """Delete a logged model (its files go with ``mlflow gc``)."""
    _client().delete_logged_model(model_id)


@_disk_full_as_os_error()
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


@contextlib.contextmanager
def champion_lock(name: str, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the champion of the registered model ``name`` alone while the block runs. Compare and promote
    read the champion, register and move the alias in such a block, so two at once (queued experiments,
    a team on one server) cannot both take an empty champion or register a run twice. The lock is a
    registered model ``<name>.lock`` in the store: only one process can create it (the store refuses a
    second of that name, on a server as in SQLite); it names its holder (``owner.*`` tags) and is
    deleted on exit. A lock whose holder is gone (a process of this host that died) or older than
    ``LOCK_STALE`` is broken with a warning; after ``wait`` seconds a UserError names the holder."""
    client, lock = _client(), f"{name}{LOCK_SUFFIX}"
    deadline, waiting = time.monotonic() + wait, False
    while not _take_lock(client, lock, name):
        holder = _lock_holder(client, lock)
        if holder is None:  # released meanwhile
            continue
        owner, age = holder
        described = f"the lock {lock} (held by process {owner.get('pid')} on {owner.get('host')} for {age:.0f} s)"
        if _is_dead(owner) or age > LOCK_STALE:
            log.warning("breaking %s: its holder is gone or stuck", described)
            _drop_lock(client, lock)
            continue
        if time.monotonic() > deadline:
            raise UserError(
                f"{tracking_uri()}: {described} is still there after {wait:.0f} s; if no compare or promote is"
                f" running, delete the registered model {lock} (MLflow UI, or MlflowClient.delete_registered_model)"
            )
        if not waiting:
            log.info("waiting for %s: another compare or promote is deciding the champion of %s", described, name)
            waiting = True
        time.sleep(LOCK_POLL)
    try:
        yield
    finally:
        _drop_lock(client, lock)


@_disk_full_as_os_error()
def _take_lock(client: MlflowClient, lock: str, name: str) -> bool:
    """Create the registered model ``lock`` naming this process; False if it exists."""
    owner = {OWNER + k: v for k, v in _owner().items()}
    description = f"Lock: a compare or promote is deciding the champion of {name}; deleted when it is done."
    try:
        client.create_registered_model(lock, tags=owner, description=description)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            return False
        raise
    return True


def _lock_holder(client: MlflowClient, lock: str) -> tuple[dict[str, str], float] | None:
    """The ``_owner`` of the lock and its age in seconds; None if there is no lock."""
    try:
        found = client.get_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    owner = {k.removeprefix(OWNER): v for k, v in found.tags.items() if k.startswith(OWNER)}
    return owner, time.time() - found.creation_timestamp / 1000


def _drop_lock(client: MlflowClient, lock: str) -> None:
    """Delete the registered model ``lock`` (already gone: fine)."""
    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise


@_disk_full_as_os_error()
def set_alias(name: str, alias: str, version: int) -> None:
    """Point ``alias`` of the registered model ``name`` at ``version``."""
    _client().set_registered_model_alias(name, alias, str(version))


@_disk_full_as_os_error()
def set_version_tags(name: str, version: int, tags: Mapping[str, str]) -> None:
    """Set ``tags`` on version ``version`` of the registered model ``name`` (a tag already there is overwritten)."""
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
