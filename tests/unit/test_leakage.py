"""The leakage audit: nearest-train distances and cross-split pairs on hashes built by hand, and the
measured distances between real X-rays and their edited copies that the audit's thresholds rest on."""

from __future__ import annotations

import importlib.util
import itertools
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chestxray.data.duplicates import CHUNK
from chestxray.data.leakage import BINS, leakage_audit, nearest_distances, plot_nearest
from conftest import REPO, png_size

log = logging.getLogger(__name__)


def ones(n: int) -> str:
    """A 256-bit hash (64 hex digits) with its lowest ``n`` bits set: ones(a) and ones(b) are |a − b| bits apart."""
    return f"{(1 << n) - 1:064x}"


def test_nearest_distances_across_words_and_ties():
    """Distances span the four 64-bit words; a tie goes to the first reference."""
    distance, index = nearest_distances(
        [ones(0), ones(70), ones(200), ones(37)], [ones(30), ones(44), ones(64), ones(100), ones(256)]
    )
    assert distance.tolist() == [30, 6, 56, 7]
    assert index.tolist() == [0, 2, 4, 0]


def test_nearest_distances_match_brute_force_over_chunks():
    """More queries than one chunk: every row equals Python's own popcount over all references."""
    rng = np.random.default_rng(7)
    query = [f"{int.from_bytes(rng.bytes(32)):064x}" for _ in range(CHUNK * 2 + 5)]
    reference = [f"{int.from_bytes(rng.bytes(32)):064x}" for _ in range(40)]
    distance, index = nearest_distances(query, reference)
    brute = np.array([[(int(q, 16) ^ int(r, 16)).bit_count() for r in reference] for q in query])
    np.testing.assert_array_equal(distance, brute.min(axis=1))
    np.testing.assert_array_equal(index, brute.argmin(axis=1))


def test_nearest_distances_edges():
    distance, index = nearest_distances([], [ones(3)])
    assert distance.shape == index.shape == (0,)
    with pytest.raises(ValueError, match="at least one reference"):
        nearest_distances([ones(3)], [])


def test_leakage_audit_counts_what_the_split_distance_misses():
    """Train at 0, 100, 200 bits; val at 20; test at 0 (a byte-identical copy), 8, 30, 50 bits from
    its nearest train image. Pairs within 32 bits in different splits: train-val t0–v0 (20),
    train-test t0–s0 (0, exact), t1–s1 (8), t1–s2 (30), val-test v0–s0 (20); s1–s2 (22) is inside test."""
    rows = [
        ("t0", "train", "a", 0),
        ("t1", "train", "b", 100),
        ("t2", "train", "c", 200),
        ("v0", "val", "d", 20),
        ("s3", "test", "e", 250),
        ("s2", "test", "f", 130),
        ("s1", "test", "g", 108),
        ("s0", "test", "a", 0),
    ]
    table = pd.DataFrame(
        {"path": [r[0] for r in rows], "split": [r[1] for r in rows], "sha256": [r[2] for r in rows]}
    ).assign(phash=[ones(r[3]) for r in rows])
    summary, nearest = leakage_audit(table, split_distance=12, audit_distance=32)
    assert summary == {
        "split_distance": 12,
        "audit_distance": 32,
        "nearest_train_distance": {
            "n": 4,
            "min": 0,
            "p01": 0,
            "p05": 0,
            "median": 8,
            "histogram": {"0-6": 1, "7-12": 1, "13-24": 0, "25-32": 1, "33-48": 0, "49-64": 1, "65-96": 0, "97-256": 0},
        },
        "cross_split_pairs": {"train-val": 1, "train-test": 3, "val-test": 1},
        "exact_pairs": 1,
        "within_split_distance": 2,
        "within_audit_distance": 3,
    }
    assert nearest.to_dict("list") == {
        "path": ["s0", "s1", "s2", "s3"],
        "nearest_train_path": ["t0", "t1", "t1", "t2"],
        "distance": [0, 8, 30, 50],
    }


def test_histogram_bins_cover_every_distance_once():
    edges = [b for lo_hi in BINS for b in lo_hi]
    assert edges[0] == 0 and edges[-1] == 256
    assert all(hi + 1 == lo for (_, hi), (lo, _) in itertools.pairwise(BINS))


def test_plot_nearest_writes_a_png(tmp_path: Path):
    path = tmp_path / "nearest.png"
    plot_nearest(np.array([0, 8, 30, 50, 96, 96]), 12, 32, path)
    width, height = png_size(path)
    assert width > 300 and height > 200


def load_benchmark():
    """benchmarks/hash_distances.py as a module: the test and the benchmark measure the same edits."""
    spec = importlib.util.spec_from_file_location("hash_distances", REPO / "benchmarks/hash_distances.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.shared
def test_measured_hash_distances_on_real_xrays(radiography_sample: Path):
    """docs/data.md's statements, measured on the 111 real Radiography images with the project's
    hashing: distinct images ≥ 68 bits apart; resized or re-encoded copies ≤ 6; contrast and gamma
    edits of ±20 % ≤ 20, some beyond the split's 12 but none beyond the audit's 32; small crops and
    rotations ≥ 22, beyond what the split joins (benchmarks/hash_distances.py measures more edits)."""
    bench = load_benchmark()
    edits = [name for name, (group, _, _) in bench.EDITS.items() if group in ("copies", "contrast_gamma")]
    measured = bench.measure(radiography_sample, 12, 32, [*edits, "crop_5pct", "rotate_2deg"])
    groups = measured["groups"]
    log.info("distinct %s; groups %s", measured["distinct_pairs"], groups)
    assert measured["images"] == 111 and measured["distinct_pairs"]["n"] == 111 * 110 // 2
    assert measured["distinct_pairs"]["min"] >= 68, measured["distinct_pairs"]
    assert groups["copies"]["max"] <= 6, groups["copies"]
    contrast_gamma = groups["contrast_gamma"]
    assert contrast_gamma["n"] == 444 and contrast_gamma["max"] <= 20, contrast_gamma
    # the split's 12 misses some of these copies (not half, as issue 16 first said); the audit's 32 misses none
    assert 0 < contrast_gamma["beyond_split_distance"] < contrast_gamma["n"] // 4, contrast_gamma
    assert contrast_gamma["beyond_audit_distance"] == 0, contrast_gamma
    geometric = groups["geometric"]
    assert geometric["min"] >= 22 and geometric["beyond_split_distance"] == geometric["n"], geometric
    # a 5 % crop can move a copy further than the two closest distinct images are from each other
    assert measured["edits"]["crop_5pct"]["max"] > measured["distinct_pairs"]["min"], measured["edits"]["crop_5pct"]
