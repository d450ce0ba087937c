"""Benchmark: validation throughput on a generated set of 299×299 PNGs (the Kaggle database's size).

    python benchmarks/validation.py [--images 5000]

Times the one decode per image (serial, then one process per core), the whole validate step
(decode, both expectation suites with Data Docs, duplicate search, MLflow run in a temporary
store), and the all-pairs near-duplicate search (the one quadratic part) on 21,165 random hashes,
the size of the Kaggle database. Prints the figures and writes them to
benchmarks/results/validation.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from chestxray.config import load_params
from chestxray.data import synthetic
from chestxray.data.duplicates import find_duplicates
from chestxray.data.images import inspect_all
from chestxray.data.layouts import read_layout
from chestxray.paths import RAW_DIR

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    params = load_params(ROOT / "params.yaml")
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench-validation-") as tmp:
        work = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        from chestxray.data.validation import validate_dataset  # after the store is set

        synthetic.generate(work / RAW_DIR, n_images=args.images, seed=params.seed)
        paths = list(read_layout(work / RAW_DIR)[0]["path"])
        serial = _rate(lambda: inspect_all(paths, workers=1), len(paths))
        parallel = _rate(lambda: inspect_all(paths), len(paths))
        stage = _rate(lambda: validate_dataset(params.data, params.validate_, work), len(paths))
    result = {
        "images": len(paths),
        "image_size": "299x299 PNG, 8-bit grey",
        "cores": cores,
        "python": platform.python_version(),
        "decode_images_per_second_serial": serial,
        "decode_images_per_second_parallel": parallel,
        "parallel_speedup": round(parallel / serial, 2),
        "validate_images_per_second": stage,
        "duplicate_search_seconds_21k": _duplicate_search_seconds(21165, params.validate_.near_duplicate_distance),
    }
    out = ROOT / "benchmarks/results/validation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _duplicate_search_seconds(n: int, distance: int) -> float:
    rng = np.random.default_rng(0)
    hashes = [f"{int.from_bytes(rng.bytes(32)):064x}" for _ in range(n)]
    start = time.perf_counter()
    find_duplicates([str(i) for i in range(n)], hashes, distance)
    return round(time.perf_counter() - start, 1)


def _rate(step, n: int) -> float:
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    log.info("%d images in %.1f s", n, seconds)
    return round(n / seconds, 1)


if __name__ == "__main__":
    main()
