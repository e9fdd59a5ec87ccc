"""Set representations: how an image's feature becomes the set of tokens the index MinHashes.

A representation is fitted once on the collection's features into a frozen *vocabulary* (an array the
index stores as an artifact), and then turns any features (the collection's, a new image's, an update's)
into token sets with that vocabulary. Every token is an integer in ``0 .. universe - 1``, hashed as
datasketch's ``MinHash.update(str(token).encode())`` would (``signatures.py``).

Sets are stored as ``(n, width)`` arrays. A row holds its tokens in increasing order, then ``universe``
(the padding token) where a set is smaller than ``width``: the padding row of the token table is all
maximum hash values, so it never lowers a minimum, and a set's size is the count of its real tokens.

Two representations, made by name (``IndexParams.sets``) in :func:`representation`:

* ``centroids`` (the default): the ids of the image's ``set_size`` nearest centroids, the centroids
  learned by spherical k-means on a sample of the collection's centred features. Neighbours share most of
  their nearest centroids and unrelated images almost none, so a shallow prefix of their MinHash finds
  neighbours without handing back the collection (recall@10 0.97 against 0.43-0.57 for top-dims sets at 50,000
  real photos, docs/quality.md).
* ``top-dims``: the image's ``top_k`` most activated (centred) dimensions: the original project's sets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from stl10_similarity.index.assign import CHUNK as ASSIGN_CHUNK
from stl10_similarity.index.assign import Nearest
from stl10_similarity.index.signatures import to_set_basis, top_k_sets
from stl10_similarity.params import IMAGES_PER_CENTROID, MAX_CENTROIDS, MIN_CENTROIDS, IndexParams

KMEANS_ITERATIONS = 4  # k-means rounds (docs/quality.md: more rounds and a larger sample gained no recall)
KMEANS_SAMPLE_PER_CENTROID = 12  # rows of the collection k-means is fitted on, per centroid (at most all)


class SetRepresentation(Protocol):
    """What the index needs from a way of turning features into sets."""

    @property
    def name(self) -> str:
        """How the index's parameters call it (``sets``)."""
        ...

    def fit(self, features: np.ndarray, stats: np.ndarray, seed: int) -> np.ndarray:
        """The frozen vocabulary learned from ``features`` (``stats``: per-dimension mean and std)."""
        ...

    def universe(self, vocabulary: np.ndarray) -> int:
        """How many distinct tokens sets can hold."""
        ...

    def sets(self, features: np.ndarray, stats: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
        """Token sets ``(n, width)`` of ``features``, padded with ``universe`` (see the module docstring)."""
        ...


def token_dtype(universe: int) -> type:
    """The smallest unsigned type holding every token and the padding token."""
    return np.uint16 if universe < 2**16 - 1 else np.uint32


def set_sizes(sets: np.ndarray, universe: int) -> np.ndarray:
    """How many real tokens each row of ``sets`` holds."""
    return (np.asarray(sets) != universe).sum(axis=1)


def set_intersections(query: np.ndarray, sets: np.ndarray, universe: int) -> np.ndarray:
    """How many tokens each row of ``sets`` shares with ``query`` (padding never counts)."""
    member = np.zeros(universe + 1, dtype=bool)
    member[np.asarray(query, dtype=np.intp)] = True
    member[universe] = False
    return member[np.asarray(sets, dtype=np.intp)].sum(axis=1) if len(sets) else np.zeros(0, dtype=np.int64)


def bitmaps(sets: np.ndarray, universe: int, chunk: int = 16384) -> np.ndarray:
    """Each set as a bitmap ``(n, ceil(universe / 64))`` uint64 (padding dropped): intersections become a
    popcount of an AND, 3x faster than looking members up (0.37 vs 1.08 ms for 4,700 sets of 100).

    Chunk by chunk through one reused scratch of booleans: 1.1 s for a million sets, where one (n, 1,280) array of
    booleans took 11.6-14.1 s.
    """
    n = len(sets)
    words = (universe + 63) // 64
    out = np.empty((n, words), dtype=np.uint64)
    scratch = np.zeros((min(n, chunk), (words + 1) * 64), dtype=bool)  # the extra word takes the padding token
    for lo in range(0, n, chunk):
        rows = np.asarray(sets[lo : lo + chunk], dtype=np.intp)
        bits = scratch[: len(rows)]
        bits[:] = False
        bits[np.arange(len(rows))[:, None], rows] = True
        out[lo : lo + len(rows)] = np.packbits(bits, axis=1, bitorder="little").view(np.uint64)[:, :words]
    return out


def bitmap_intersections(query_bits: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """How many members each row of ``bits`` shares with ``query_bits`` (both from :func:`bitmaps`)."""
    return np.bitwise_count(bits & query_bits).sum(axis=1, dtype=np.int64)


@dataclass(frozen=True)
class TopDims:
    """The ``top_k`` largest dimensions in the chosen basis; its vocabulary is empty (the stats are enough)."""

    top_k: int
    basis: str
    dim: int
    name: str = "top-dims"

    def fit(self, features: np.ndarray, stats: np.ndarray, seed: int) -> np.ndarray:
        return np.zeros((0, self.dim), dtype=np.float32)

    def universe(self, vocabulary: np.ndarray) -> int:
        return self.dim

    def sets(self, features: np.ndarray, stats: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
        return top_k_sets(features, self.top_k, self.basis, stats)


@dataclass(frozen=True)
class NearestCentroids:
    """The ids of the ``set_size`` nearest of ``count`` centroids (in the centred basis, by code products:
    ``assign.py``)."""

    count: int
    set_size: int
    name: str = "centroids"

    def fit(self, features: np.ndarray, stats: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        n = len(features)
        sample = min(n, self.count * KMEANS_SAMPLE_PER_CENTROID)
        rows = np.sort(rng.choice(n, size=sample, replace=False)) if sample < n else np.arange(n)
        x = centred_unit(np.asarray(features[rows]), stats)
        return spherical_kmeans(x, min(self.count, len(x)), rng)

    def universe(self, vocabulary: np.ndarray) -> int:
        return len(vocabulary)

    def sets(self, features: np.ndarray, stats: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
        return nearest_centroids(features, stats, vocabulary, self.set_size)


def centred_unit(features: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Features minus the collection mean, scaled to unit length: where centroids live."""
    x = to_set_basis(features, "centered", stats)  # a fresh array: scaled in place (no second copy to fault in)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    x /= np.maximum(norms, 1e-12)
    return x


def spherical_kmeans(x: np.ndarray, count: int, rng: np.random.Generator,
                     iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """``count`` unit centroids of the unit rows ``x`` (each row to its nearest by code products, ``assign.py``;
    mean, renormalise).

    Starts from distinct random rows; a centroid left empty restarts at the row its centroid fits worst.
    """
    if count < 1 or len(x) < count:
        raise ValueError(f"need at least {count} rows to fit {count} centroids, got {len(x)}")
    centroids = x[rng.choice(len(x), size=count, replace=False)].copy()
    for _ in range(iterations):
        nearest, best = Nearest(centroids)(x, 1)
        assign = nearest[:, 0].astype(np.int64)
        counts = np.bincount(assign, minlength=count)
        sums = _row_sums(x, assign, count)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            sums[empty] = x[np.argsort(best[:, 0])[: len(empty)]]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = (sums / np.maximum(norms, 1e-12)).astype(np.float32)
    return np.ascontiguousarray(centroids, dtype=np.float32)


def _row_sums(x: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """The sum of the rows of ``x`` in each of ``count`` groups, rows added in order (torch's ``index_add_``
    took 0.03 s where numpy's ``reduceat`` over the rows sorted by group took 0.89-0.95 s at 49,152 x 1,280)."""
    import torch

    with torch.inference_mode():
        sums = torch.zeros((count, x.shape[1]), dtype=torch.float32)
        sums.index_add_(0, torch.from_numpy(groups), torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return sums.numpy()


def nearest_centroids(features: np.ndarray, stats: np.ndarray, centroids: np.ndarray, size: int,
                      chunk: int = ASSIGN_CHUNK) -> np.ndarray:
    """The ids of each row's ``size`` nearest centroids, ascending: ``(n, size)``."""
    n, count = len(features), len(centroids)
    size = min(size, count)
    out: np.ndarray = np.empty((n, size), dtype=token_dtype(count))
    nearest = Nearest(centroids)
    for lo in range(0, n, chunk):
        idx, _ = nearest(to_set_basis(features[lo : lo + chunk], "centered", stats), size, cosines=False)
        out[lo : lo + chunk] = np.sort(idx.astype(out.dtype), axis=1)
    return out


def centroid_count(n: int) -> int:
    """Centroids for a collection of ``n`` images when none is asked for: about one per ``IMAGES_PER_CENTROID``."""
    return int(min(MAX_CENTROIDS, max(MIN_CENTROIDS, round(n / IMAGES_PER_CENTROID)), max(n, 1)))


def representation(params: IndexParams, n: int, dim: int) -> SetRepresentation:
    """The representation ``params`` ask for, sized for a collection of ``n`` images."""
    make: dict[str, Callable[[], SetRepresentation]] = {
        "centroids": lambda: NearestCentroids(params.centroids or centroid_count(n), params.set_size),
        "top-dims": lambda: TopDims(params.top_k, params.basis, dim),
    }
    return make[params.sets]()
