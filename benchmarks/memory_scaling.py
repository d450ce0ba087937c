"""Benchmark: peak memory of the train stage at 1k, 5k and 21,165 (the Kaggle database) images at 224 px.

    python benchmarks/memory_scaling.py [--sizes 1000 5000 21165]

For each size, in a temporary work dir: a cache written by ``prepare_cache`` from random uint8
pixels in place of decoded files (labels over the 4 classes in the real database's
shares; 70/15/15 split), and the repository's params.yaml with ``data.image_size: 224``,
``model: cnn`` with ``backbones.cnn.filters: FILTERS`` (small, so that 21k trains in minutes on
2 cores), one epoch, no fine-tuning, the rest (augmentation, batch size, determinism) as in the
repository. Then ``python stages/train.py`` runs as DVC runs it (cwd = the work dir, its own
SQLite MLflow store) and its peak RSS is taken from ``os.wait4`` (the kernel's high-water mark).
RSS counts the cache pages the memory map has touched (train and val: all of them in one epoch),
so ``peak_anon_gb_*`` (anonymous memory only, ``RssAnon`` polled every 0.2 s: can miss a spike
shorter than that) shows what the process holds beyond the cache. Writes
benchmarks/results/memory_scaling.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from chestxray.data.cache import prepare_cache
from chestxray.data.radiography import REAL_COUNTS
from chestxray.data.split_table import SPLITS
from chestxray.paths import CACHE_DIR, SPLIT_CSV

ROOT = Path(__file__).resolve().parents[1]
SIZE = 224
FILTERS = [8, 16]
GIB = 1024**3
log = logging.getLogger("benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 21165])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/memory_scaling.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    result = {
        "image_size": SIZE,
        "model": "cnn",
        "filters": FILTERS,
        "batch_size": raw["train"]["batch_size"],
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
    }
    for n in args.sizes:
        key = f"{n // 1000}k" if n >= 1000 else str(n)
        with tempfile.TemporaryDirectory(prefix=f"bench-memory-{key}-") as tmp:
            work = Path(tmp)
            cache_bytes = _write_cache(work, n, raw)
            _write_params(work, raw)
            seconds, peak_kb, anon_kb = _train(work)
        result |= {
            f"images_{key}": n,
            f"cache_gb_{key}": round(cache_bytes / GIB, 3),
            f"peak_rss_gb_{key}": round(peak_kb * 1024 / GIB, 3),
            f"peak_anon_gb_{key}": round(anon_kb * 1024 / GIB, 3),
            f"seconds_{key}": round(seconds, 1),
        }
        gb = {k: v for k, v in result.items() if k.endswith(f"_{key}")}
        log.info("%6d images: %s", n, ", ".join(f"{k} {v}" for k, v in gb.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _write_cache(work: Path, n: int, raw: dict) -> int:
    """Write ``work``'s split table of ``n`` images and their cache (random pixels in place of
    decoded files, through ``prepare_cache``); return the cache's bytes."""
    rng = np.random.default_rng(raw["seed"])
    classes = sorted(REAL_COUNTS)
    shares = np.array([REAL_COUNTS[c] for c in classes]) / sum(REAL_COUNTS.values())
    labels = rng.choice(classes, size=n, p=shares)
    n_val, n_test = round(n * raw["split"]["val"]), round(n * raw["split"]["test"])
    split = np.repeat(SPLITS, [n - n_val - n_test, n_val, n_test])
    table = pd.DataFrame(
        {"path": [f"data/raw/{c}/{i}.png" for i, c in enumerate(labels)], "label": labels, "split": split}
    )
    (work / SPLIT_CSV).parent.mkdir(parents=True)
    table.to_csv(work / SPLIT_CSV, index=False)
    prepare_cache(
        work / SPLIT_CSV,
        work / CACHE_DIR,
        SIZE,
        load=lambda _, size: rng.integers(0, 256, (size, size), dtype=np.uint8),
    )
    return sum(f.stat().st_size for f in (work / CACHE_DIR).iterdir())


def _write_params(work: Path, raw: dict) -> None:
    """The repository's params with the overrides of this benchmark."""
    params = {**raw, "model": "cnn", "data": {**raw["data"], "image_size": SIZE}}
    params["train"] = {**raw["train"], "epochs": 1, "fine_tune_epochs": 0}
    params["backbones"] = {**raw["backbones"], "cnn": {**raw["backbones"]["cnn"], "filters": FILTERS}}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def _train(work: Path) -> tuple[float, int, int]:
    """Run the train stage in ``work``; return (seconds, peak RSS in kB, peak anonymous RSS in kB)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    start, peak_anon = time.perf_counter(), 0
    with open(work / "train.log", "wb") as out:
        child = subprocess.Popen(
            [sys.executable, str(ROOT / "stages/train.py")], cwd=work, env=env, stdout=out, stderr=out
        )
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)  # the child's own rusage, not all children's
        if pid:
            break
        peak_anon = max(peak_anon, _rss_anon_kb(child.pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.exit(
            f"train stage failed ({child.returncode}):\n" + (work / "train.log").read_text(errors="replace")[-3000:]
        )
    return seconds, usage.ru_maxrss, peak_anon


def _rss_anon_kb(pid: int) -> int:
    """The process's anonymous resident memory (kB), 0 once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:")), 0)


if __name__ == "__main__":
    main()
