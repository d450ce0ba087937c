"""External validation: the trained model scored on datasets it never trained on (``evaluate.external``),
its classes mapped onto each dataset's task, images that are in the training data left out."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from chestxray import paths
from chestxray.config import EvaluateSettings, ExternalDataset
from chestxray.data.images import inspect_all
from chestxray.data.labels import apply_task
from chestxray.data.layouts import read_layout
from chestxray.data.leakage import nearest_distances
from chestxray.data.occlusion import occlude as occlude_centre
from chestxray.data.sources import download_kaggle, external_path, extract_zip, local_kind, sha256
from chestxray.errors import UserError
from chestxray.io import atomic_path, read_json, write_json
from chestxray.judge.metrics import bootstrap_ci, classification_metrics
from chestxray.learn.models import predict_proba
from chestxray.progress import progress
from chestxray.tasks import COVID, TASKS

log = logging.getLogger(__name__)

RECORD = ".fetched.json"  # in an extracted or downloaded folder: what it was made from
REPORTED = ("n", "accuracy", "macro_f1", "balanced_accuracy", "covid_sensitivity", "covid_specificity", "roc_auc_macro")


@contextlib.contextmanager
def naming(dataset: ExternalDataset) -> Iterator[None]:
    """Prefix a UserError raised inside with the entry's key, so the user knows which entry to fix."""
    try:
        yield
    except UserError as exc:
        raise UserError(f"{dataset.key}: {exc}") from None


def fetch(dataset: ExternalDataset, root: Path) -> Path:
    """The folder to read: a local folder in place (relative to ``root``); a local .zip extracted into
    ``root/data/external/<name>`` (again only when the archive's sha256 changed); a Kaggle dataset
    downloaded there with the project's client (again only when ``dataset`` names another slug)."""
    target = root / paths.EXTERNAL_DIR / dataset.name
    with naming(dataset):
        if dataset.source == "kaggle":
            return _materialise(
                target,
                {"source": "kaggle", "dataset": dataset.dataset},
                lambda dest: download_kaggle(dataset.dataset, dest, root / paths.DOWNLOADS_DIR),
            )
        source = external_path(dataset, root)
        if local_kind(source, "path") == "folder":
            return source
        return _materialise(target, {"source": "local", "sha256": sha256(source)}, functools.partial(_unzip, source))


def _unzip(archive: Path, dest: Path) -> dict[str, Any]:
    """Extract ``archive`` into ``dest``; return what to record of it."""
    extract_zip(archive, dest, fix="replace the archive")
    return {"path": str(archive), "size": archive.stat().st_size}


def _materialise(target: Path, wanted: dict[str, Any], make: Callable[[Path], dict[str, Any]]) -> Path:
    """``target`` as made by ``make(folder)`` (which returns what to record besides ``wanted``), reused
    when its record holds ``wanted``; replaced atomically otherwise."""
    record = target / RECORD
    if record.is_file() and wanted.items() <= read_json(record).items():
        log.info("reusing %s (%s)", target, wanted)
        return target
    with atomic_path(target, is_dir=True) as tmp:
        origin = make(tmp)
        write_json(tmp / RECORD, {**origin, **wanted})
    log.info("fetched %s into %s", wanted, target)
    return target


def class_mapping(model_classes: Sequence[str], task: str) -> dict[str, str | None]:
    """Each model class → the external task's class it counts for, or None (its probability is dropped
    and the rest renormalised). Binary: COVID → COVID, every other class → non-COVID; otherwise a class
    maps to itself when the task has it. Fails when the task has a class the model cannot predict."""
    if task == "binary":
        return {c: COVID if c == COVID else "non-COVID" for c in model_classes}
    missing = [c for c in TASKS[task] if c not in model_classes]
    if missing:
        covered = [t for t, names in TASKS.items() if t == "binary" or set(names) <= set(model_classes)]
        raise UserError(
            f"task {task} has the class(es) {missing}, which the model (classes {list(model_classes)}) cannot"
            f" predict; set its task to one of {covered}"
        )
    return {c: c if c in TASKS[task] else None for c in model_classes}


def map_probabilities(prob: np.ndarray, mapping: dict[str, str | None], classes: Sequence[str]) -> np.ndarray:
    """Model probabilities (N, len(mapping)), columns in ``mapping``'s order → (N, len(classes)): each
    external class the sum of the model classes mapped to it, rows renormalised over what is kept."""
    into = np.array([[float(mapping[m] == c) for c in classes] for m in mapping])
    kept = prob @ into
    total = kept.sum(axis=1, keepdims=True)  # 0 only when a dropped class took all of a float32 softmax
    return np.divide(kept, total, out=np.full_like(kept, 1 / len(classes)), where=total > 0)


def score_external(
    model: keras.Model,
    classes: Sequence[str],
    image_size: int,
    occlude: float,
    dataset: ExternalDataset,
    training: pd.DataFrame,
    near_distance: int,
    cfg: EvaluateSettings,
    root: Path,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score ``model`` (outputs in ``classes`` order, input ``image_size`` px, trained on images with the
    central ``occlude`` box blacked out when > 0) on ``dataset``. Images within ``near_distance`` bits
    of a ``training`` image (its ``phash`` column; a byte-identical copy is 0 bits away) are left out; unreadable
    files are skipped. Returns the metrics (``REPORTED``, ``ci``, ``task``, ``classes``, ``mapping``,
    ``left_out``, ``unreadable``, ``in_training``, ``source``, ``fingerprint``) and one row per scored
    image: path (relative to the dataset folder), actual, predicted, ``p_<class>``."""
    with naming(dataset):
        mapping = class_mapping(classes, dataset.task)
        folder = fetch(dataset, root)
        table, task = apply_task(read_layout(folder, dataset.layout, dataset.csv)[0], dataset.task, dataset.label_map)
    table, pixels, unreadable = readable_images(table, dataset, image_size)
    seen = in_training(table, training, near_distance)
    for path in table.loc[seen, "path"]:
        log.info("%s: leaving out %s, which is in the training data", dataset.key, path)
    table, x = table[~seen].reset_index(drop=True), pixels[~seen]
    if table.empty:
        raise UserError(
            f"{dataset.key}: no image left to score ({unreadable} unreadable, {int(seen.sum())} in the training"
            " data); point it to another dataset"
        )
    external = list(TASKS[dataset.task])
    with progress(len(x), f"predict {dataset.name}") as bar:
        prob = predict_proba(model, occlude_centre(x, occlude) if occlude > 0 else x, bar)
    prob = map_probabilities(prob, mapping, external)
    y = table["label"].map(external.index).to_numpy()
    groups = [p or path for p, path in zip(table["patient_id"].astype(str), table["path"], strict=True)]
    values = classification_metrics(y, prob, external, cfg.calibration_bins)
    relative = [Path(p).relative_to(folder).as_posix() for p in table["path"]]
    metrics = {
        **{name: values[name] for name in REPORTED},
        "ci": bootstrap_ci(y, prob, groups, external, cfg.bootstrap, cfg.seed, cfg.calibration_bins),
        "task": dataset.task,
        "classes": external,
        "mapping": mapping,
        "left_out": task["excluded"],
        "unreadable": unreadable,
        "in_training": int(seen.sum()),
        "source": dataset.dataset if dataset.source == "kaggle" else dataset.path,
        "fingerprint": fingerprint(relative, list(table["sha256"])),
    }
    predictions = pd.DataFrame(
        {
            "path": relative,
            "actual": table["label"],
            "predicted": [external[i] for i in prob.argmax(axis=1)],
            **{f"p_{c}": prob[:, i] for i, c in enumerate(external)},
        }
    )
    log.info(
        "%s: %d images, macro-F1 %s, accuracy %s (%d left out as in the training data, %d unreadable)",
        dataset.key,
        metrics["n"],
        metrics["macro_f1"],
        metrics["accuracy"],
        metrics["in_training"],
        unreadable,
    )
    return metrics, predictions


def readable_images(
    table: pd.DataFrame, dataset: ExternalDataset, image_size: int
) -> tuple[pd.DataFrame, np.ndarray, int]:
    """The rows whose file decodes, with its ``sha256`` and ``phash``, their pixels at ``image_size``
    (N, S, S, 1) uint8 from the same decode (``data.images.inspect``), and the number skipped, each
    with a WARNING."""
    infos = inspect_all(list(table["path"]), size=image_size)
    for path, info in zip(table["path"], infos, strict=True):
        if info.error is not None:
            log.warning("%s: skipping %s (%s)", dataset.key, path, info.error)
    ok = [info.error is None for info in infos]
    kept = [info for info in infos if info.error is None]
    hashed = table[ok].assign(sha256=[i.sha256 for i in kept], phash=[i.phash for i in kept])
    pixels = np.stack([i.pixels for i in kept])[..., None] if kept else np.zeros((0, image_size, image_size, 1))
    return hashed.reset_index(drop=True), pixels, len(infos) - len(kept)


def in_training(table: pd.DataFrame, training: pd.DataFrame, near_distance: int) -> np.ndarray:
    """Whether each row of ``table`` is within ``near_distance`` bits of a ``training`` image's perceptual
    hash (a byte-identical copy has the same hash: 0 bits)."""
    distance, _ = nearest_distances(list(table["phash"]), list(training["phash"]))
    return distance <= near_distance


def fingerprint(relative: Sequence[str], digests: Sequence[str]) -> str:
    """sha256 over the sorted ``<relative path>\t<file sha256>`` lines of the images scored."""
    lines = "\n".join(f"{r}\t{d}" for r, d in sorted(zip(relative, digests, strict=True)))
    return hashlib.sha256(lines.encode()).hexdigest()
