"""Shared DVC storage as a team uses it: `dvc push` to an S3 bucket (moto's S3 server) and to a folder,
a colleague's fresh `git clone` + `dvc pull` that re-runs no stage, and experiments shared through the
git remote (`dvc exp push` / `dvc exp pull`) whose model a colleague restores without retraining.

The pusher is the session's ``team`` project (reproduced once with `dvc repro`); every colleague is a
`git clone` under the test's tmp_path of a bare git repository on disk. Commands are the real `dvc` and
`git`, run as a user would, with the credentials in the usual places: the AWS variables, or the
git-ignored `.dvc/config.local` (`dvc remote modify --local`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from project import ran, run, sh

from chestxray import paths
from conftest import REPO

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

BUCKET = "dvc-store"
PREFIX = "chestxray"  # the folder of the bucket the team's DVC objects go to
REMOTE_URL = f"s3://{BUCKET}/{PREFIX}"
EXPERIMENT = "seed7"
EXPERIMENT_SETTINGS = ("-S", "train.seed=7", "-S", "train.epochs=2")  # another model that trains in about a minute
QUICK, TRANSFER, TRAIN = 120, 600, 1200  # seconds: git and DVC bookkeeping, a push or pull, an experiment


@dataclass
class Sharing:
    """The team project after it shared its results: committed, pushed to git and to both DVC remotes."""

    origin: Path  # the team's git remote: a bare repository on disk
    branch: str
    disk: Path  # the filesystem remote (a shared folder)
    objects: set[str]  # the DVC objects the pushed commit uses, as a remote lays them out (files/md5/ab/cd…)


def commit(root: Path, *args: str) -> str:
    return sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", *args, timeout=QUICK)


def timed(what: str, root: Path, *args: str, env: dict[str, str] | None = None, timeout: int = TRANSFER) -> str:
    """``sh`` that logs how long the command took."""
    start = time.monotonic()
    output = sh(root, *args, env=env, timeout=timeout)
    log.info("%s took %.1f s", what, time.monotonic() - start)
    return output


def cached_outs(root: Path, lock: dict) -> dict[str, str]:
    """{path: md5} of the outputs DVC keeps in its cache (not ``cache: false``), from dvc.yaml and ``lock``."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    uncached = set()
    for stage in stages.values():
        for out in (*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])):
            if isinstance(out, dict) and any(opts and opts.get("cache") is False for opts in out.values()):
                uncached |= {re.sub(r"\$\{(\w+)\}", lambda m: getattr(paths, m[1]), path) for path in out}
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if out["path"] not in uncached
    }


def object_key(md5: str) -> str:
    return f"files/md5/{md5[:2]}/{md5[2:]}"


def objects(root: Path, lock: dict) -> set[str]:
    """Every DVC object ``lock``'s cached outputs use (a folder's ``.dir`` listing and each file in
    it), as keys relative to a remote's root; the listings are read from ``root``'s cache."""
    keys = set()
    for md5 in cached_outs(root, lock).values():
        keys.add(object_key(md5))
        if md5.endswith(".dir"):
            listing = json.loads((root / ".dvc/cache" / object_key(md5)).read_text())
            keys |= {object_key(entry["md5"]) for entry in listing}
    return keys


def digests(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def clone(sharing: Sharing, dest: Path) -> Path:
    """A colleague's fresh clone of the team's git remote."""
    sh(dest.parent, "git", "clone", "-q", "--branch", sharing.branch, str(sharing.origin), dest.name, timeout=QUICK)
    return dest


def assert_nothing_to_run(colleague: Path) -> None:
    """DVC finds every stage up to date, `dvc repro` runs none, and the clone is as committed."""
    assert json.loads(sh(colleague, "dvc", "status", "--json", timeout=QUICK)) == {}
    assert ran(sh(colleague, "dvc", "repro", timeout=QUICK)) == []
    assert sh(colleague, "git", "status", "--porcelain", timeout=QUICK) == ""


@pytest.fixture(scope="module")
def sharing(team, tmp_path_factory: pytest.TempPathFactory) -> Sharing:
    """What the pusher does after `dvc repro`: commit the results (README), name the two DVC remotes in
    the team's .dvc/config (credentials stay in the AWS variables), push git and DVC."""
    root, store = team.root, team.store
    sh(root, "git", "add", "dvc.lock", "metrics", "reports", timeout=QUICK)
    if run(root, "git", "diff", "--cached", "--quiet", timeout=QUICK)[0]:  # not yet committed by another test
        commit(root, "-qm", "dvc repro results")
    assert sh(root, "git", "status", "--porcelain", timeout=QUICK) == "", "dvc repro left files git does not track"

    store.make_bucket(BUCKET)
    disk = tmp_path_factory.mktemp("dvc-disk")
    sh(root, "dvc", "remote", "add", "-d", "storage", REMOTE_URL, timeout=QUICK)
    sh(root, "dvc", "remote", "modify", "storage", "endpointurl", store.endpoint, timeout=QUICK)
    sh(root, "dvc", "remote", "add", "disk", str(disk), timeout=QUICK)
    sh(root, "git", "add", ".dvc/config", timeout=QUICK)
    commit(root, "-qm", "DVC remotes")

    branch = sh(root, "git", "rev-parse", "--abbrev-ref", "HEAD", timeout=QUICK).strip()
    origin = tmp_path_factory.mktemp("git-remote") / "chestxray.git"
    sh(origin.parent, "git", "init", "-q", "--bare", f"--initial-branch={branch}", origin.name, timeout=QUICK)
    sh(root, "git", "remote", "add", "origin", str(origin), timeout=QUICK)
    sh(root, "git", "push", "-q", "origin", branch, timeout=QUICK)

    timed("pusher: dvc push (S3)", root, "dvc", "push", env=store.env)
    timed("pusher: dvc push -r disk", root, "dvc", "push", "-r", "disk")
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return Sharing(origin, branch, disk, objects(root, lock))


def test_the_projects_own_config_names_no_remote():
    """A team's remote lives in its own clone's config: the project ships none."""
    config = (REPO / ".dvc/config").read_text()
    assert "remote" not in config and "endpointurl" not in config


def test_push_then_a_fresh_clone_pulls_from_s3_and_reruns_nothing(team, sharing, tmp_path):
    store = team.store
    keys = set(store.keys(BUCKET, f"{PREFIX}/"))
    assert len(sharing.objects) > 1000  # the raw images, the cache, the model, the reports' folders
    assert {f"{PREFIX}/{key}" for key in sharing.objects} <= keys  # the objects are in the bucket itself

    colleague = clone(sharing, tmp_path / "colleague")
    key_id, secret = store.env["AWS_ACCESS_KEY_ID"], store.env["AWS_SECRET_ACCESS_KEY"]
    sh(colleague, "dvc", "remote", "modify", "--local", "storage", "access_key_id", key_id, timeout=QUICK)
    sh(colleague, "dvc", "remote", "modify", "--local", "storage", "secret_access_key", secret, timeout=QUICK)
    assert sh(colleague, "git", "status", "--porcelain", timeout=QUICK) == ""  # .dvc/config.local is git-ignored
    assert secret not in (colleague / ".dvc/config").read_text()

    timed("colleague: dvc pull (S3, credentials in .dvc/config.local)", colleague, "dvc", "pull")  # no AWS variables
    assert_nothing_to_run(colleague)
    show = ("dvc", "metrics", "show", "--json")
    assert json.loads(sh(colleague, *show, timeout=QUICK)) == json.loads(sh(team.root, *show, timeout=QUICK))
    assert digests(colleague / paths.MODEL_DIR) == digests(team.root / paths.MODEL_DIR) != {}
    assert (colleague / paths.PLOTS_TEMPLATE_HTML).read_bytes() == (team.root / paths.PLOTS_TEMPLATE_HTML).read_bytes()


def test_push_then_a_fresh_clone_pulls_from_a_shared_folder_and_reruns_nothing(team, sharing, tmp_path):
    stored = {p.relative_to(sharing.disk).as_posix() for p in sharing.disk.rglob("*") if p.is_file()}
    assert sharing.objects <= stored

    colleague = clone(sharing, tmp_path / "colleague")
    timed("colleague: dvc pull -r disk", colleague, "dvc", "pull", "-r", "disk")
    assert_nothing_to_run(colleague)
    assert digests(colleague / "metrics") == digests(team.root / "metrics")
    assert digests(colleague / paths.MODEL_DIR) == digests(team.root / paths.MODEL_DIR) != {}


def test_the_endpoint_can_come_from_aws_endpoint_url(team, sharing, tmp_path):
    """dvc-s3 (through botocore) honours AWS_ENDPOINT_URL when the remote names no endpoint."""
    colleague = clone(sharing, tmp_path / "colleague")
    sh(colleague, "dvc", "remote", "add", "--local", "mirror", REMOTE_URL, timeout=QUICK)
    env = {**team.store.env, "AWS_ENDPOINT_URL": team.store.endpoint}
    timed("colleague: dvc pull -r mirror models", colleague, "dvc", "pull", "-r", "mirror", paths.MODEL_DIR, env=env)
    assert digests(colleague / paths.MODEL_DIR) == digests(team.root / paths.MODEL_DIR) != {}


def test_a_colleague_restores_a_shared_experiment_without_retraining(team, sharing, tmp_path):
    """The pusher runs an experiment (--temp: its workspace stays the baseline) and shares it with
    `dvc exp push`; the colleague's `dvc exp pull` + `dvc exp apply` + `dvc pull` gives the pusher's
    model byte for byte and its metrics, with nothing left to run. (`dvc exp run --pull` would retrain
    here: DVC keeps no run-cache for stages with `cache: false` outputs, such as train.)"""
    pusher, store = team.root, team.store
    baseline_model = digests(pusher / paths.MODEL_DIR)
    env = {**team.env, **store.env}
    output = timed(
        "pusher: dvc exp run --temp",
        pusher,
        "dvc",
        "exp",
        "run",
        "--temp",
        "-n",
        EXPERIMENT,
        *EXPERIMENT_SETTINGS,
        env=env,
    )
    assert "train" in ran(output)
    assert sh(pusher, "git", "status", "--porcelain", timeout=QUICK) == ""  # --temp: the workspace stays as it was
    timed("pusher: dvc exp push", pusher, "dvc", "exp", "push", "origin", EXPERIMENT, env=store.env, timeout=TRANSFER)

    refs = sh(pusher, "git", "for-each-ref", "--format=%(refname)", "refs/exps", timeout=QUICK).split()
    (ref,) = [r for r in refs if r.endswith(f"/{EXPERIMENT}")]
    lock = yaml.safe_load(sh(pusher, "git", "show", f"{ref}:dvc.lock", timeout=QUICK))
    used = objects(pusher, lock)
    assert {f"{PREFIX}/{key}" for key in used} <= set(store.keys(BUCKET, f"{PREFIX}/"))
    model_md5 = cached_outs(pusher, lock)[paths.MODEL_DIR]
    listing = json.loads((pusher / ".dvc/cache" / object_key(model_md5)).read_text())
    pushed_model = {
        e["relpath"]: hashlib.sha256((pusher / ".dvc/cache" / object_key(e["md5"])).read_bytes()).hexdigest()
        for e in listing
    }
    assert pushed_model != baseline_model

    colleague = clone(sharing, tmp_path / "colleague")
    timed("colleague: dvc exp pull", colleague, "dvc", "exp", "pull", "origin", EXPERIMENT, env=store.env)
    timed("colleague: dvc exp apply", colleague, "dvc", "exp", "apply", EXPERIMENT, timeout=QUICK)
    timed("colleague: dvc pull", colleague, "dvc", "pull", env=store.env)
    assert json.loads(sh(colleague, "dvc", "status", "--json", timeout=QUICK)) == {}
    assert ran(sh(colleague, "dvc", "repro", timeout=QUICK)) == []
    assert digests(colleague / paths.MODEL_DIR) == pushed_model
    train = yaml.safe_load((colleague / "params.yaml").read_text())["train"]
    assert (train["seed"], train["epochs"]) == (7, 2)
    for name in sorted((colleague / "metrics").iterdir()):
        pushed = sh(pusher, "git", "show", f"{ref}:metrics/{name.name}", timeout=QUICK)
        assert json.loads(name.read_text()) == json.loads(pushed), name.name
