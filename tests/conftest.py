"""Shared fixtures: real generated data, a real temporary MLflow store, and ../shared."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Keras reads KERAS_HOME once, at import: give the test session its own empty one, so no test
# sees (or writes to) the user's ~/.keras. Tests that need weights copy them into models/ here.
KERAS_HOME = Path(tempfile.mkdtemp(prefix="keras-home-"))
os.environ["KERAS_HOME"] = str(KERAS_HOME)
# The kaggle client fixes its config folder (kaggle.json) when first imported: give the session
# its own, so no test reads the user's credentials. Tests that need a kaggle.json write it here.
KAGGLE_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="kaggle-config-"))
os.environ["KAGGLE_CONFIG_DIR"] = str(KAGGLE_CONFIG_DIR)

import yaml

from chestxray import paths
from chestxray.config import Params, load_params, parse_params
from chestxray.data import synthetic

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# HTTP to servers the tests start on 127.0.0.1, never through a proxy a developer has set.
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_until_up(
    url: str, server: subprocess.Popen, what: str, output: Callable[[], str], timeout: float = 180
) -> None:
    """Poll ``url`` until it answers 200; fail naming ``what``, with ``output()`` (the server's
    output), if the server exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, f"{what} exited with {server.returncode}:\n{output()}"
        try:
            with LOOPBACK.open(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{what} did not answer {url} within {timeout:.0f} s:\n{output()}"
        time.sleep(0.5)


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared beside the project (real samples and weights); skipped with a reason if absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: real samples and ImageNet weights are not available here")
    return SHARED


@pytest.fixture(scope="session")
def radiography_sample(shared: Path) -> Path:
    """The real Kaggle Radiography sample in ../shared (111 images)."""
    return shared / "data/covid19-radiography-sample"


@pytest.fixture(scope="session")
def radiography_zip(radiography_sample: Path) -> bytes:
    """The sample as Kaggle ships the database: one zip of the folder's contents."""
    return zip_tree(radiography_sample, radiography_sample)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of the PNG at ``path``, after checking that it is a whole, valid PNG."""
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def zip_tree(folder: Path, base: Path) -> bytes:
    """A deflated zip of every file under ``folder``, named relative to ``base``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(base).as_posix())
    return buf.getvalue()


@pytest.fixture
def keras_weights(shared: Path):
    """Copy real ImageNet weight files from ../shared into the session's $KERAS_HOME/models."""
    models = KERAS_HOME / "models"
    models.mkdir(exist_ok=True)
    copied = []

    def seed(name: str) -> Path:
        target = models / name
        target.write_bytes((shared / "weights/keras" / name).read_bytes())
        copied.append(target)
        return target

    yield seed
    for target in copied:
        target.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the Kaggle Radiography layout (generated once per session)."""
    root = tmp_path_factory.mktemp("raw")
    synthetic.generate(root, n_images=160, seed=7)
    return root


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    # and MLflow's in-process global: an earlier test's in-process run set it, and it overrides the variable
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture
def params():
    """The repository's own params.yaml, validated."""
    return load_params(REPO / "params.yaml")


def make_params(**overrides) -> Params:
    """The repository's params with dotted-key overrides, e.g. ``make_params(**{"train.epochs": 2})``."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return parse_params(raw)


def project(root: Path, *, raw: Path | None = None, cache: Path | None = None) -> Path:
    """``root`` laid out as a repository for a stage function (paths.py relative to it), with the
    given inputs linked in place: ``raw`` as data/raw, ``cache`` as data/processed/cache."""
    for target, path in ((raw, paths.RAW_DIR), (cache, paths.CACHE_DIR)):
        if target is not None:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).symlink_to(target.resolve(), target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def cache_dir(raw_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image cache (32 px) of the session's synthetic dataset, split 70/15/15."""
    from chestxray.data.cache import prepare_cache
    from chestxray.data.labels import apply_task
    from chestxray.data.layouts import read_layout
    from chestxray.data.splitting import assign_splits

    out = tmp_path_factory.mktemp("cache")
    table, _ = apply_task(read_layout(raw_dataset)[0], "4class", {})
    assign_splits(table, 0.15, 0.15, seed=1).to_csv(out / "split.csv", index=False)
    prepare_cache(out / "split.csv", out / "cache", image_size=32)
    return out / "cache"


@pytest.fixture(scope="session")
def trained_model(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN trained for a few epochs on the session's cache (32 px), saved as model.keras."""
    import keras

    from chestxray.config import HeadSettings
    from chestxray.data.cache import cache_meta, load_split
    from chestxray.learn.models import build_model

    keras.utils.set_random_seed(0)
    classes = cache_meta(cache_dir)["classes"]
    model, _ = build_model("cnn", 32, len(classes), "none", {"filters": [8, 16]}, HeadSettings(dense=[], dropout=0.0))
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = load_split(cache_dir, "train")
    model.fit(x.astype("float32"), y, epochs=8, batch_size=16, verbose=0)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """``tiny_disk(size)``: a real small file system (tmpfs, e.g. ``"64k"``) at ``tmp_path/disk``,
    where this machine lets the tests mount one (as root); else the test is skipped with the reason."""
    disk = tmp_path / "disk"

    def mount(size: str) -> Path:
        disk.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); an injected ENOSPC test covers it"
            )
        return disk

    yield mount
    if disk.is_mount():
        subprocess.run(["umount", "--lazy", str(disk)], check=True)  # an open store may still hold a file


def fill(disk: Path) -> None:
    """Write into ``disk`` until it is full."""
    with (disk / "filler").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying to reach Google on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium; skipped with a reason when absent, except under CI (CI must run the test)."""
    if not CHROMIUM.is_file():
        reason = f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium) to run the browser test"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so it must run", pytrace=False)
        pytest.skip(reason)
    return CHROMIUM


@dataclass
class Team:
    """A reproduced project whose runs live on a shared tracking server (docs/team.md)."""

    root: Path  # the project: a git repo, reproduced once with `dvc repro` (project.OVERRIDES)
    env: dict[str, str]  # what its commands need beside the usual: MLFLOW_TRACKING_URI
    store: Any  # services.ObjectStore: the S3 API server; bucket "team" holds the MLflow artifacts
    tracking_uri: str  # http://127.0.0.1:PORT, on PostgreSQL, artifacts in s3://team/mlflow
    first_repro: str  # the output of that dvc repro


@pytest.fixture(scope="session")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    """An S3 API server, PostgreSQL and an MLflow server on both, all on 127.0.0.1, and a light project
    reproduced against them; the servers stop at the end of the session. Without PostgreSQL's programs
    the tests that use it are skipped with the reason, except under CI (.ci/run installs them)."""
    import project
    import services

    try:
        services.postgres_bin("initdb")
    except RuntimeError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; CI is set, so the team server's tests must run", pytrace=False)
        pytest.skip(str(exc))
    work = tmp_path_factory.mktemp("team")
    with services.object_store(work) as store:
        store.make_bucket("team")
        with services.postgres() as backend, services.tracking_server(work, backend, store, "s3://team/mlflow") as uri:
            root = project.clean_copy(tmp_path_factory.mktemp("team-project"))
            env = {"MLFLOW_TRACKING_URI": uri}
            yield Team(root, env, store, uri, project.sh(root, "dvc", "repro", env=env, timeout=1800))
