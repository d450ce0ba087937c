"""Benchmark: images/s of the input pipeline (uint8 cache + tf.data) against Keras' folder readers.

    python benchmarks/input_pipeline.py [--images 2000] [--size 224] [--batch 32] [--epochs 3]

The headline is ``speedup_vs_imagedatagenerator_both_augmenting``: training batches as the train
stage draws them (with its augmentation) against the legacy ``ImageDataGenerator`` with the same
augmentation. On the same generated 299×299 grey PNGs, all read as grey at the same size and
batch size, shuffled: this project's one-time decode into the uint8 cache (``prepare_cache``,
serial) and its epochs (``make_dataset`` over the memory-mapped cache, without and with the train
stage's augmentation), ``tf.keras.preprocessing.image.ImageDataGenerator().flow_from_directory``
(legacy; decodes every PNG every epoch, in the calling thread; also with the same augmentation,
contrast aside) and ``keras.utils.image_dataset_from_directory`` (decodes every epoch, in
tf.data's parallel map). Each reader gets one warm-up pass, then ``--epochs`` full
passes are timed; every batch is converted to NumPy, as a training loop would consume it. No model
runs, so these are upper bounds of what training can draw; after the warm-up pass the PNGs are in
the OS page cache, so disk reads are not measured. The amortised rates add the one-time decode
to 10 and 30 epochs. Writes benchmarks/results/input_pipeline.json, prints it, then the headline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.config import load_params
from chestxray.data import synthetic
from chestxray.data.cache import load_split, prepare_cache
from chestxray.io import write_text

ROOT = Path(__file__).resolve().parents[1]
AMORTISED_EPOCHS = (10, 30)
log = logging.getLogger("benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="timed passes per reader, after one warm-up pass")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/input_pipeline.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(ROOT / "params.yaml")

    import tensorflow as tf

    from chestxray.learn.inputs import augmenter, make_dataset
    from chestxray.learn.training import seed_everything

    seed_everything(params.seed, params.train.deterministic)
    size, batch = args.size, args.batch
    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        work = Path(tmp)
        synthetic.generate(work / "raw", n_images=args.images, seed=params.seed)
        table = _split_table(work / "raw", work / "folders")
        table.to_csv(work / "split.csv", index=False)
        n = len(table)

        start = time.perf_counter()
        prepare_cache(work / "split.csv", work / "cache", size)
        build_seconds = time.perf_counter() - start
        log.info("cache build: %d images in %.1f s", n, build_seconds)
        x, y = load_split(work / "cache", "train")

        augment = augmenter(params.train.augment, params.seed)
        ours = make_dataset(x, y, batch, shuffle=True, seed=params.seed)
        augmented = make_dataset(x, y, batch, shuffle=True, seed=params.seed, augment=augment)
        folders = str(work / "folders")
        reader = {
            "target_size": (size, size),
            "color_mode": "grayscale",
            "class_mode": "sparse",
            "batch_size": batch,
            "seed": params.seed,
            "interpolation": "bilinear",
        }
        generator = tf.keras.preprocessing.image.ImageDataGenerator().flow_from_directory(folders, **reader)
        cfg = params.train.augment  # the same augmentation, as far as ImageDataGenerator has it (no contrast)
        generator_augment = tf.keras.preprocessing.image.ImageDataGenerator(
            rotation_range=cfg.rotation * 360,
            width_shift_range=cfg.shift,
            height_shift_range=cfg.shift,
            shear_range=math.degrees(math.atan(cfg.shear)),  # an angle; the setting is its tangent
            zoom_range=cfg.zoom,
            horizontal_flip=cfg.flip,
            fill_mode="constant",
        ).flow_from_directory(folders, **reader)
        from_directory = tf.keras.utils.image_dataset_from_directory(
            folders, color_mode="grayscale", image_size=(size, size), batch_size=batch, shuffle=True, seed=params.seed
        )
        passes = {
            "cache": lambda: ours,
            "cache_augment": lambda: augmented,
            "imagedatagenerator": lambda: itertools.islice(generator, len(generator)),
            "imagedatagenerator_augment": lambda: itertools.islice(generator_augment, len(generator_augment)),
            "image_dataset_from_directory": lambda: from_directory,
        }
        rates = {name: _epoch_rate(name, epoch, n, args.epochs) for name, epoch in passes.items()}
    result = {
        "images": n,
        "source_images": "299x299 PNG, 8-bit grey",
        "image_size": size,
        "batch_size": batch,
        "timed_epochs": args.epochs,
        "cores": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "speedup_vs_imagedatagenerator_both_augmenting": round(
            rates["cache_augment"] / rates["imagedatagenerator_augment"], 2
        ),
        "cache_build_images_per_second": round(n / build_seconds, 1),
        **{f"epoch_images_per_second_{k}": round(v, 1) for k, v in rates.items()},
        **{
            f"amortised_images_per_second_{e}_epochs": round(n * e / (build_seconds + n * e / rates["cache"]), 1)
            for e in AMORTISED_EPOCHS
        },
        "speedup_vs_imagedatagenerator": round(rates["cache"] / rates["imagedatagenerator"], 2),
        "speedup_vs_image_dataset_from_directory": round(rates["cache"] / rates["image_dataset_from_directory"], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps(result, indent=2) + "\n")  # in this order: the headline first
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()
    log.info(
        "speedup_vs_imagedatagenerator_both_augmenting: %.2fx (%.1f against %.1f images/s, both augmenting)",
        result["speedup_vs_imagedatagenerator_both_augmenting"],
        rates["cache_augment"],
        rates["imagedatagenerator_augment"],
    )


def _cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo: rates differ across machines, ratios less so."""
    info = Path("/proc/cpuinfo").read_text()
    return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")


def _split_table(raw: Path, folders: Path) -> pd.DataFrame:
    """All generated PNGs as one train split (``path, label, split``); also a class-folder tree of
    symlinks to them (``folders/<Class>/<file>.png``) for the Keras readers."""
    paths = sorted(raw.glob("*/*/images/*.png"))
    labels = [p.parent.parent.name for p in paths]
    for path, label in zip(paths, labels, strict=True):
        (folders / label).mkdir(parents=True, exist_ok=True)
        (folders / label / path.name).symlink_to(path)
    return pd.DataFrame({"path": [str(p) for p in paths], "label": labels, "split": "train"})


def _epoch_rate(name: str, epoch: Callable[[], Iterable], n: int, epochs: int) -> float:
    """Images/s over ``epochs`` full passes of ``epoch()`` after one warm-up pass."""
    _consume(epoch(), n)
    start = time.perf_counter()
    for _ in range(epochs):
        _consume(epoch(), n)
    rate = n * epochs / (time.perf_counter() - start)
    log.info("%-30s %8.1f images/s per epoch", name, rate)
    return rate


def _consume(batches: Iterable, n: int) -> None:
    """Pull every batch as NumPy arrays; check that the pass held all ``n`` images."""
    seen = 0
    for images, labels in batches:
        seen += len(np.asarray(images))
        np.asarray(labels)
    if seen != n:
        raise RuntimeError(f"a pass yielded {seen} images, expected {n}")


if __name__ == "__main__":
    main()
