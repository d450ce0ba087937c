"""Benchmark: training images/s fed by the cache pipeline against bare ``model.fit`` on in-memory arrays.

    python benchmarks/train_throughput.py [--steps 20] [--warmup 3] [--images N]

MobileNetV2 and ResNet50 at 224 px, batch 32, built by ``build_model`` with random weights (the
weights do not change the cost of a step), compiled with Adam and sparse categorical
cross-entropy (the train stage's default loss; no class weights), with the train stage's seeding
and op determinism. Cases: full training (every layer trainable, the
heavy case) for both, and MobileNetV2 with its base frozen (head only: a cheap step, so the input
pipeline weighs most; it runs ``FROZEN_STEP_FACTOR`` times the steps). Each case is fitted twice
on the same model: streamed from a generated uint8 cache of ``--images`` random images through
``make_dataset(shuffle=True)``, and as one float32 array of the same images in memory
(``model.fit(x, y, batch_size, shuffle=True)``). The frozen case also streams with the train
stage's augmentation. A callback times the end of every step; the rate covers the ``--steps``
steps after ``--warmup`` steps (tracing, first allocations). ``ratio_vs_bare_fit`` is the lowest
pipeline / bare ratio over the cases without augmentation. The peak RSS is the whole process's
(it includes the in-memory copy that the bare side needs). Writes
benchmarks/results/train_throughput.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import yaml

from chestxray.config import parse_params
from chestxray.data.cache import load_split, prepare_cache
from chestxray.learn.inputs import augmenter, make_dataset
from chestxray.learn.models import build_model
from chestxray.learn.training import seed_everything

ROOT = Path(__file__).resolve().parents[1]
SIZE, CLASSES = 224, 4
CASES = (("mobilenetv2", "full"), ("resnet50", "full"), ("mobilenetv2", "frozen"))
FROZEN_STEP_FACTOR = 4
log = logging.getLogger("benchmark")


class _StepClock(keras.callbacks.Callback):
    """Records the time at the end of every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.ends.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, help="images in the cache and in memory (default: as many as the longest run uses)"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (frozen case: 4x)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_throughput.json")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    needed = (args.warmup + FROZEN_STEP_FACTOR * args.steps) * args.batch
    args.images = args.images or needed
    if args.images < needed:
        parser.error(f"--images must be at least (warmup + {FROZEN_STEP_FACTOR} x steps) x batch = {needed}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params = parse_params(raw)
    seed_everything(params.seed, params.train.deterministic)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        x, y = load_split(_write_cache(Path(tmp), args.images, params.seed), "train")
        in_memory = np.asarray(x, dtype=np.float32)
        augment = augmenter(params.train.augment, params.seed)
        feeds = {  # model.fit's data arguments per side
            "pipeline": lambda: {"x": make_dataset(x, y, args.batch, shuffle=True, seed=params.seed)},
            "bare_fit": lambda: {"x": in_memory, "y": y, "batch_size": args.batch, "shuffle": True},
            "pipeline_augment": lambda: {"x": make_dataset(x, y, args.batch, True, params.seed, augment)},
        }
        cases = {}
        for name, case in CASES:
            backbone = parse_params(raw).backbones[name]
            model, base = build_model(name, SIZE, CLASSES, "none", backbone.constructor_args, params.train.head)
            base.trainable = case == "full"
            steps = args.steps * (FROZEN_STEP_FACTOR if case == "frozen" else 1)
            sides = ("pipeline", "bare_fit", "pipeline_augment") if case == "frozen" else ("pipeline", "bare_fit")
            lr = backbone.learning_rate
            rates = {}
            for side in sides:
                rates[side] = _rate(model, lr, feeds[side](), args.batch, args.warmup, steps)
                log.info("%-12s %-6s %-16s %7.1f images/s", name, case, side, rates[side])
            cases[f"{name}_{case}"] = {
                "steps": steps,
                **{f"{side}_images_per_second": round(rate, 1) for side, rate in rates.items()},
                "ratio": round(rates["pipeline"] / rates["bare_fit"], 3),
            }
    result = {
        "images": args.images,
        "image_size": SIZE,
        "batch_size": args.batch,
        "warmup_steps": args.warmup,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "deterministic": params.train.deterministic,
        "cases": cases,
        "ratio_vs_bare_fit": min(c["ratio"] for c in cases.values()),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _write_cache(work: Path, n: int, seed: int) -> Path:
    """A cache with a train split of ``n`` images of random pixels over ``CLASSES`` labels,
    written by ``prepare_cache`` (no files to decode); return its folder."""
    rng = np.random.default_rng(seed)
    labels = [f"class{c}" for c in rng.integers(0, CLASSES, n)]
    pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "label": labels, "split": "train"}).to_csv(
        work / "split.csv", index=False
    )
    prepare_cache(
        work / "split.csv",
        work / "cache",
        SIZE,
        load=lambda _, size: rng.integers(0, 256, (size, size), dtype=np.uint8),
    )
    return work / "cache"


def _rate(model: keras.Model, lr: float, data: dict[str, Any], batch: int, warmup: int, steps: int) -> float:
    """Images/s of ``steps`` training steps after ``warmup`` steps, freshly compiled; ``data``: fit's data arguments."""
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    clock = _StepClock()
    model.fit(**data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[clock], verbose=0)
    return steps * batch / (clock.ends[-1] - clock.ends[warmup - 1])


if __name__ == "__main__":
    main()
