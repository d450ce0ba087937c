"""Benchmark: the wall time of a queued sweep with one queue worker and with two.

    python benchmarks/queue_workers.py [--experiments 4] [--jobs 1 2] [--epochs N] [--set KEY=VALUE ...] [--out FILE]

In a temporary folder, the repository's last commit (``git archive HEAD``, without its results: dvc.lock,
metrics/, reports/) becomes a fresh git repo with ``--epochs`` and ``--set`` written into its params.yaml
(values in YAML, e.g. ``--set 'backbones.cnn.filters=[8,16]'``); ``dvc repro`` reproduces it (not timed; its
own SQLite MLflow store, the local default) and the results are committed. Then, for each ``--jobs`` value
N: ``dvc exp run --queue -S train.seed=1,…,E`` (E = ``--experiments``: the default model, one experiment per
training seed), ``dvc queue start -j N``, and a wait until every experiment is in git (its ref under
refs/exps, polled every 0.2 s with git, which costs next to nothing beside the sweep; ``dvc queue
status``, a second of CPU, runs every 30 s to notice a failed experiment). The seconds from queueing to
the last experiment's ref are the sweep's wall time. Every sweep trains the same seeds from the same
baseline, after the workers of the previous sweep have exited (DVC's run cache restores none of the
previous sweep's stages: it skips stages with ``cache: false`` outputs, as train, evaluate, audit and
compare have). The speedup of N workers is the seconds of the first
``--jobs`` value over N's. Writes benchmarks/results/queue.json (what was run, the machine, the seconds
and speedups) and prints it.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ("dvc.lock", "metrics/", "reports/")  # reproduced in the copy, not taken from the commit
EXPERIMENT_REF = re.compile(r"^refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/[^/]+$")  # one experiment's commit
POLL = 0.2  # seconds between checks of the experiments' refs
STATUS_EVERY = 30  # seconds between `dvc queue status` calls while a sweep runs (each costs a second of CPU)
SWEEP_TIMEOUT = 4 * 3600  # seconds a sweep may take before the benchmark gives up
WORKERS_EXIT = 120  # seconds to wait for the idle workers to exit (DVC stops them after 10 s idle)
GIT = ("git", "-c", "user.name=benchmark", "-c", "user.email=benchmark@localhost")
log = logging.getLogger("benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=4, help="experiments per sweep (train.seed=1..E)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="queue workers of each sweep")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: params.yaml's)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="another params.yaml value (YAML)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/queue.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = dict(_setting(text) for text in args.set)
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    seeds = list(range(1, args.experiments + 1))
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        project = Path(tmp) / "project"
        commit = _copy_head(project)
        params = _set_params(project / "params.yaml", overrides)
        _sh(project, *GIT, "init", "-q")
        _sh(project, *GIT, "add", "-A")
        _sh(project, *GIT, "commit", "-qm", "baseline")
        start = time.perf_counter()
        _sh(project, "dvc", "repro")
        repro_seconds = time.perf_counter() - start
        log.info("dvc repro: %.1f s", repro_seconds)
        _sh(project, *GIT, "add", "-A")
        _sh(project, *GIT, "commit", "-qm", "reproduced")
        try:
            sweeps = {str(jobs): _sweep(project, seeds, jobs) for jobs in args.jobs}
        finally:  # a sweep that failed may leave workers running in the folder about to be removed
            subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=project, env=_env(), capture_output=True)
    first = sweeps[str(args.jobs[0])]["seconds"]
    result = {
        "settings": {
            "commit": commit,
            "experiments": args.experiments,
            "sweep": f"dvc exp run --queue -S train.seed={','.join(map(str, seeds))}",
            "jobs": args.jobs,
            "overrides": overrides,
            "model": params["model"],
            "epochs": params["train"]["epochs"],
            "image_size": params["data"]["image_size"],
            "n_images": params["data"]["synthetic"]["n_images"],
            "data_source": params["data"]["source"],
            "mlflow_store": "sqlite (the local default)",
        },
        "cores": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "dvc": metadata.version("dvc"),
        "repro_seconds": round(repro_seconds, 1),
        "sweeps": sweeps,
        "speedup": {jobs: round(first / sweep["seconds"], 3) for jobs, sweep in sweeps.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → (dotted key, the value parsed as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        sys.exit(f"--set {text}: expected KEY=VALUE, e.g. --set train.batch_size=64")
    return key, yaml.safe_load(value)


def _copy_head(project: Path) -> str:
    """The files of the repository's HEAD, but its results, in ``project``; the commit's hash."""
    commit = _sh(ROOT, "git", "rev-parse", "HEAD").strip()
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(project, members=[m for m in tar.getmembers() if not m.name.startswith(RESULTS)], filter="data")
    return commit


def _set_params(path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Write the dotted-key ``overrides`` into the params file ``path``; its values afterwards."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                sys.exit(f"--set {key}: params.yaml has no section {part!r} there")
            node = node[part]
        if last not in node:
            sys.exit(f"--set {key}: params.yaml has no key {last!r} there")
        node[last] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return raw


def _sweep(project: Path, seeds: list[int], jobs: int) -> dict[str, Any]:
    """Queue one experiment per seed and run the queue with ``jobs`` workers; its wall seconds."""
    before = _experiments(project)
    start = time.perf_counter()
    _sh(project, "dvc", "exp", "run", "--queue", "-S", f"train.seed={','.join(map(str, seeds))}")
    # The workers outlive `dvc queue start` and inherit its output: a file, as a pipe would keep it waiting
    with (project / ".dvc/tmp/queue-start.log").open("w") as out:
        subprocess.run(
            ["dvc", "queue", "start", "-j", str(jobs)], cwd=project, env=_env(), stdout=out, stderr=out, check=True
        )
    checked = start
    while len(_experiments(project) - before) < len(seeds):
        now = time.perf_counter()
        if now - checked > STATUS_EVERY:  # a failed experiment never gets a ref: ask DVC now and then
            checked, status = now, _sh(project, "dvc", "queue", "status")
            if "Failed" in status or not re.search(r"\b(Queued|Running)\b", status) or now - start > SWEEP_TIMEOUT:
                sys.exit(f"the sweep with -j {jobs} did not finish:\n{status}")
        time.sleep(POLL)
    seconds = time.perf_counter() - start
    log.info("-j %d: %d experiments in %.1f s", jobs, len(seeds), seconds)
    deadline = time.perf_counter() + WORKERS_EXIT
    while "Worker status: 0 active, 0 idle" not in _sh(project, "dvc", "queue", "status"):
        if time.perf_counter() > deadline:
            sys.exit(f"the workers of the sweep with -j {jobs} did not exit within {WORKERS_EXIT} s")
        time.sleep(2)
    return {"seconds": round(seconds, 1), "experiments": len(seeds)}


def _experiments(project: Path) -> set[str]:
    """The experiments' refs in ``project``'s git."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=project, capture_output=True, text=True
    )
    return {ref for ref in refs.stdout.split() if EXPERIMENT_REF.match(ref)}


def _env() -> dict[str, str]:
    """The environment of a user's shell in the project: this venv first on PATH, no MLflow or DVC variables
    of the caller (the copy uses its own SQLite store), no analytics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return env | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", "DVC_NO_ANALYTICS": "1"}


def _sh(cwd: Path, *command: str) -> str:
    """Run ``command`` in ``cwd`` (``_env``); its output; exit with its end if it fails."""
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    return done.stdout


def _cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo."""
    info = Path("/proc/cpuinfo").read_text()
    return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")


if __name__ == "__main__":
    main()
