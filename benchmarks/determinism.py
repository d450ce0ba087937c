"""Benchmark: which training settings give bit-identical weights, on one machine and across oneDNN code paths.

    python benchmarks/determinism.py [--cases NAME ...] [--epochs N]

In a temporary work dir with the repository's params.yaml (its own SQLite MLflow store), the
check, download (the synthetic dataset), validate, split and prepare stages run once, as DVC runs
them. Then the train stage (``python stages/train.py``) runs once per case, each in a fresh process
whose environment sets the case's variables before TensorFlow loads: twice with the defaults, with
oneDNN capped to lower instruction sets (``ONEDNN_MAX_CPU_ISA``: it can only cap below what this
CPU has), with TensorFlow's oneDNN graph rewrites off (``TF_ENABLE_ONEDNN_OPTS=0``), and with
``train.deterministic: false``. Per run: wall seconds of the stage, the sha256 of the trained
weights (``model.get_weights()`` bytes in order: the .keras zip holds timestamps), the largest
absolute weight difference to the first run, and validation and test macro-F1 of the saved model
(``predict_proba`` in this process, default environment, so only training differs). ``--epochs``
overrides ``train.epochs`` (default: params.yaml's, as ``dvc repro`` trains). Writes
benchmarks/results/determinism.json and prints it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from chestxray.data.cache import cache_meta, load_split
from chestxray.paths import CACHE_DIR, MODEL_DIR, TRAIN_JSON

ROOT = Path(__file__).resolve().parents[1]
DATA_STAGES = ("check", "download", "validate", "split", "prepare")
# name → (environment variables, train params overrides)
CASES: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "default": ({}, {}),
    "default_again": ({}, {}),
    "isa_avx512_core": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, {}),
    "isa_avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    "isa_avx2_again": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    "onednn_off": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, {}),
    "onednn_off_isa_avx2": ({"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    "nondeterministic": ({}, {"deterministic": False}),
}
log = logging.getLogger("benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/determinism.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    if args.epochs is not None:
        raw["train"]["epochs"] = args.epochs
    result: dict[str, Any] = {
        "model": raw["model"],
        "image_size": raw["data"]["image_size"],
        "epochs": raw["train"]["epochs"],
        "n_images": raw["data"]["synthetic"]["n_images"],
        "cores": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-determinism-") as tmp:
        work = Path(tmp)
        _write_params(work, raw, {})
        for stage in DATA_STAGES:
            _stage(work, stage, {})
        first: list[np.ndarray] | None = None
        for name in args.cases:
            env, overrides = CASES[name]
            _write_params(work, raw, overrides)
            seconds = _stage(work, "train", env)
            weights, scores = _score(work)
            first = weights if first is None else first
            run = {
                "env": env,
                "train_overrides": overrides,
                "seconds": round(seconds, 1),
                "epochs_run": json.loads((work / TRAIN_JSON).read_text())["epochs_run"],
                "weights_sha256": _digest(weights),
                "max_abs_diff_vs_first": _max_abs_diff(first, weights),
                **scores,
            }
            result["runs"][name] = run
            log.info("%s: %s", name, run)
    result["identical_groups"] = _groups(result["runs"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _write_params(work: Path, raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    """``work``'s params.yaml: the repository's, with ``overrides`` in ``train``."""
    params = {**raw, "train": {**raw["train"], **overrides}}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def _stage(work: Path, name: str, env: dict[str, str]) -> float:
    """Run ``stages/<name>.py`` in ``work`` as DVC runs it, with ``env`` added; return its wall seconds."""
    full = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", **env}
    for key in ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS"):
        if key not in env:
            full.pop(key, None)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / f"stages/{name}.py")], cwd=work, env=full, capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(f"stage {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _score(work: Path) -> tuple[list[np.ndarray], dict[str, float]]:
    """The saved model's weights and its validation and test macro-F1."""
    import keras  # loads TensorFlow, in this process only after the data stages

    from chestxray.judge.metrics import classification_metrics
    from chestxray.learn.models import predict_proba

    model = keras.models.load_model(work / MODEL_DIR / "model.keras")
    classes = cache_meta(work / CACHE_DIR)["classes"]
    scores = {}
    for split in ("val", "test"):
        x, y = load_split(work / CACHE_DIR, split)
        metrics = classification_metrics(y, predict_proba(model, x), classes)
        scores[f"{split}_macro_f1"] = round(metrics["macro_f1"], 6)
    return [np.asarray(w) for w in model.get_weights()], scores


def _digest(weights: list[np.ndarray]) -> str:
    """sha256 of the weights' bytes, in the model's order."""
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def _max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest absolute difference between two weight lists of the same model."""
    diffs = [np.abs(x.astype(np.float64) - y.astype(np.float64)).max(initial=0.0) for x, y in zip(a, b, strict=True)]
    return float(max(diffs))


def _groups(runs: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Runs grouped by identical weights, in run order."""
    groups: dict[str, list[str]] = {}
    for name, run in runs.items():
        groups.setdefault(run["weights_sha256"], []).append(name)
    return list(groups.values())


def _cpu_model() -> str:
    """The CPU's model name and its widest vector extensions, from /proc/cpuinfo."""
    info = Path("/proc/cpuinfo").read_text()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wide = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(wide)})"


if __name__ == "__main__":
    main()
