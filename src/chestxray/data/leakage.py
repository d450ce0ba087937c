"""A leakage audit that does not reuse the split's own threshold.

The split joins near copies at ``validate.near_duplicate_distance`` bits, so a leakage check at that
distance finds nothing by construction. This audit looks further: each test image's Hamming distance
to its nearest train image (a distribution and a fixed-bin histogram, so runs compare), and the pairs
of images in different splits within a looser ``audit_distance``. It reports; it never fails.

Distances are between the manifest's 256-bit ``phash`` values. Such a hash sets the bits of the DCT
coefficients above their median: 128 bits unless coefficients tie at the median (all 111 real sample
images: 128), so distances are even.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.data.duplicates import distance_blocks, hash_words, near_pairs
from chestxray.figures import figure, save_figure

SPLITS = ("train", "val", "test")
# Fixed histogram bins (bits, both ends included), from what the 111 real sample images measured
# (benchmarks/hash_distances.py): resized or re-encoded copies 0-6; up to the split's default 12;
# contrast and gamma edits 13-24, stronger ones up to the audit's default 32; distinct images from 68.
BINS = ((0, 6), (7, 12), (13, 24), (25, 32), (33, 48), (49, 64), (65, 96), (97, 256))


def nearest_distances(query: Sequence[str], reference: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """For each ``query`` hash (hex), the Hamming distance to its nearest ``reference`` hash and that
    reference's index (the first one on a tie), as two int64 arrays of ``len(query)``."""
    if not reference:
        raise ValueError("nearest_distances needs at least one reference hash")
    queries, references = hash_words(query), hash_words(reference)
    distance = np.zeros(len(queries), np.int64)
    index = np.zeros(len(queries), np.int64)
    for start, bits in distance_blocks(queries, references):  # CHUNK × n temporaries: 30 MB at n = 14,700
        index[start : start + len(bits)] = bits.argmin(axis=1)
        distance[start : start + len(bits)] = bits.min(axis=1)
    return distance, index


def leakage_audit(table: pd.DataFrame, split_distance: int, audit_distance: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """Audit a split table (``path``, ``split`` in train/val/test, ``sha256``, ``phash``).

    Returns the summary and the per-test-image table (``path``, ``nearest_train_path``, ``distance``,
    sorted by distance, then path). The summary: ``nearest_train_distance`` over the test images
    (``n``, ``min``, ``p01``, ``p05``, ``median``, ``histogram`` in ``BINS``); ``cross_split_pairs``,
    per pair of splits, the pairs of images within ``audit_distance`` bits, byte-identical ones
    included; ``exact_pairs``, how many of those are byte-identical; ``within_split_distance`` and
    ``within_audit_distance``, the test images whose nearest train image is within each distance."""
    train = table[table["split"] == "train"].reset_index(drop=True)
    test = table[table["split"] == "test"].reset_index(drop=True)
    distance, index = nearest_distances(list(test["phash"]), list(train["phash"]))
    nearest = pd.DataFrame(
        {"path": test["path"], "nearest_train_path": train["path"].to_numpy()[index], "distance": distance}
    ).sort_values(["distance", "path"], kind="stable", ignore_index=True)
    summary = {
        "split_distance": split_distance,
        "audit_distance": audit_distance,
        "nearest_train_distance": distribution(distance),
        **cross_split_pairs(table, audit_distance),
        "within_split_distance": int((distance <= split_distance).sum()),
        "within_audit_distance": int((distance <= audit_distance).sum()),
    }
    return summary, nearest


def distribution(distance: np.ndarray) -> dict[str, Any]:
    """``n``, ``min``, ``p01``, ``p05``, ``median`` and the ``BINS`` histogram of whole-bit distances.
    A percentile is the smallest distance with at least that share of the values at or below it."""
    quantiles = np.percentile(distance, [1, 5, 50], method="inverted_cdf").astype(int)
    return {
        "n": len(distance),
        "min": int(distance.min()),
        "p01": int(quantiles[0]),
        "p05": int(quantiles[1]),
        "median": int(quantiles[2]),
        "histogram": {f"{lo}-{hi}": int(((distance >= lo) & (distance <= hi)).sum()) for lo, hi in BINS},
    }


def cross_split_pairs(table: pd.DataFrame, max_distance: int) -> dict[str, Any]:
    """``cross_split_pairs``: per pair of splits (``train-val``, ``train-test``, ``val-test``), the
    image pairs within ``max_distance`` bits; ``exact_pairs``: how many of all those are byte-identical."""
    i, j = near_pairs(list(table["phash"]), max_distance).T
    rank = table["split"].map({name: r for r, name in enumerate(SPLITS)}).to_numpy()
    low, high = np.minimum(rank[i], rank[j]), np.maximum(rank[i], rank[j])
    sha = table["sha256"].to_numpy()
    pairs = {
        f"{SPLITS[a]}-{SPLITS[b]}": int(((low == a) & (high == b)).sum())
        for a in range(len(SPLITS))
        for b in range(a + 1, len(SPLITS))
    }
    return {"cross_split_pairs": pairs, "exact_pairs": int(((low != high) & (sha[i] == sha[j])).sum())}


def plot_nearest(distances: np.ndarray, split_distance: int, audit_distance: int, path: Path) -> None:
    """Histogram of each test image's distance to its nearest train image (2-bit bins: distances are
    even; a log scale, so the rare close ones show), with the split's and the audit's distances
    marked, as a PNG at ``path``."""
    fig, ((ax,),) = figure((7, 4))
    top = min(256, int(max(distances.max(initial=0), audit_distance)) + 4)
    ax.hist(distances, bins=np.arange(-1, top + 2, 2), color="tab:blue", label=f"test images (n={len(distances):,})")
    ax.axvline(split_distance, ls="--", color="tab:red", label=f"split groups copies within {split_distance} bits")
    ax.axvline(audit_distance, ls=":", color="tab:orange", label=f"audit distance {audit_distance} bits")
    ax.set(
        title="Each test image's nearest train image",
        xlabel="Hamming distance between 256-bit perceptual hashes (bits)",
        ylabel="Test images (log scale)",
        yscale="log",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save_figure(fig, path)
