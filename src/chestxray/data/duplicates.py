"""Exact duplicates (same bytes) and near-duplicates (perceptual hashes within a Hamming distance)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

CHUNK = 256  # rows compared at once: CHUNK × n uint64 words (43 MB at n = 21k)


@dataclass(frozen=True)
class Duplicates:
    """Duplicate groups of a list of images. ``group[i]`` is the group number of image ``i`` (−1
    when it has no copy), numbered in order of each group's first image; ``exact_groups`` counts
    sets of byte-identical files, ``near_groups`` the groups that hold a copy that is not."""

    group: np.ndarray
    exact_groups: int
    near_groups: int


def hash_words(phashes: Sequence[str]) -> np.ndarray:
    """Hex perceptual hashes (all of one length, a multiple of 16 digits) → (n, words) uint64."""
    if not phashes:
        return np.zeros((0, 0), np.uint64)
    return np.array([[int(h[i : i + 16], 16) for i in range(0, len(h), 16)] for h in phashes], dtype=np.uint64)


def distance_blocks(queries: np.ndarray, references: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """The Hamming distances between hash words (``hash_words``), ``CHUNK`` queries at a time: (the
    block's first query index, its (rows, len(references)) uint16 distances)."""
    for start in range(0, len(queries), CHUNK):
        block = queries[start : start + CHUNK]
        distance = np.zeros((len(block), len(references)), np.uint16)
        for word in range(references.shape[1]):  # word by word: small temporaries, no (rows × n × words) array
            distance += np.bitwise_count(block[:, word, None] ^ references[None, :, word])
        yield start, distance


def near_pairs(phashes: Sequence[str], max_distance: int) -> np.ndarray:
    """Index pairs (i, j), i < j, whose hashes differ in at most ``max_distance`` bits, as an (k, 2) int array."""
    words = hash_words(phashes)
    pairs = []
    for start, distance in distance_blocks(words, words):
        i, j = np.nonzero(distance <= max_distance)
        i = i + start
        pairs.append(np.stack([i[i < j], j[i < j]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """The connected component of each of ``n`` nodes joined by ``edges`` ((k, 2) index pairs)."""
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def find_duplicates(sha256: Sequence[str], phashes: Sequence[str], max_distance: int) -> Duplicates:
    """Group images whose bytes are identical or whose perceptual hashes are within ``max_distance``
    bits (transitively: a chain of near copies is one group)."""
    n = len(sha256)
    near = near_pairs(phashes, max_distance)
    component = components(n, np.concatenate([_same_value_pairs(sha256), near]))
    sizes = np.bincount(component, minlength=n)
    group = np.full(n, -1, np.int64)
    numbers: dict[int, int] = {}
    for i, c in enumerate(component):
        if sizes[c] > 1:
            group[i] = numbers.setdefault(int(c), len(numbers))
    exact_sets = {h for h, k in Counter(sha256).items() if k > 1}
    not_byte_identical = {int(group[i]) for i, j in near if sha256[i] != sha256[j]}
    return Duplicates(group=group, exact_groups=len(exact_sets), near_groups=len(not_byte_identical))


def _same_value_pairs(values: Sequence[str]) -> np.ndarray:
    """Pairs (index of a value's first occurrence, index of a later one)."""
    first: dict[str, int] = {}
    pairs = []
    for i, value in enumerate(values):
        if (j := first.setdefault(value, i)) != i:
            pairs.append((j, i))
    return np.array(pairs, np.int64).reshape(-1, 2)
