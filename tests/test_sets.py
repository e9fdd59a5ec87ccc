"""Set representations: learned centroids, and the seam a representation of one's own plugs into."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from stl10_similarity.index import assign, index_in_memory
from stl10_similarity.index.sets import NearestCentroids, centred_unit, centroid_count, set_sizes
from stl10_similarity.index.signatures import datasketch_signature, set_statistics
from stl10_similarity.params import MAX_CENTROIDS, MIN_CENTROIDS, IndexParams
from stl10_similarity.search import Searcher
from stl10_similarity.synthetic import synthetic_features


@dataclass(frozen=True)
class AboveMean:
    """A representation of the test's own: the dimensions more than ``margin`` above the collection mean,
    at most ``width`` of them, so sets have different sizes (some are empty)."""

    margin: float
    width: int = 40
    name: str = "above-mean"

    def fit(self, features: np.ndarray, stats: np.ndarray, seed: int) -> np.ndarray:
        return np.zeros((0, features.shape[1]), dtype=np.float32)

    def universe(self, vocabulary: np.ndarray) -> int:
        return vocabulary.shape[1]

    def sets(self, features: np.ndarray, stats: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
        dim = vocabulary.shape[1]
        out = np.full((len(features), self.width), dim, dtype=np.uint16)
        for row, x in enumerate(np.asarray(features) - stats[0]):
            dims = np.flatnonzero(x > self.margin)
            dims = np.sort(dims[np.argsort(-x[dims], kind="stable")][: self.width])
            out[row, : len(dims)] = dims
        return out


def test_a_representation_of_ones_own_plugs_in_with_variable_set_sizes():
    feats, labels = synthetic_features(400, 3)
    rep = AboveMean(margin=0.04)
    index = index_in_memory(feats, labels.astype(np.int16), [], IndexParams(num_perm=64, trees=16), rep=rep)
    sizes = set_sizes(index.sets, index.universe)
    assert sizes.min() < sizes.max() and index.universe == feats.shape[1]  # sizes really vary
    for row in range(0, index.n, 37):  # signatures are datasketch's MinHash of each set's real tokens
        tokens = index.sets[row][index.sets[row] != index.universe]
        assert np.array_equal(index.signatures[row], datasketch_signature(tokens, 64))
    searcher = Searcher(index)
    members = [set(r[r != index.universe].tolist()) for r in index.sets]
    for row in range(0, index.n, 53):
        result = searcher.query(searcher.for_row(row), 5, "rerank")
        assert len(result.results) == 5 and row not in [m.id for m in result.results]
        for m in result.results:  # every score is computed with each set's own size
            union = members[row] | members[m.id]
            want = len(members[row] & members[m.id]) / len(union) if union else 1.0
            assert m.set_jaccard == pytest.approx(want, abs=1e-6)
            assert m.intersection + m.unique_to_query == 100 and m.intersection + m.unique_to_match == 100
    # a feature from outside the collection gets its set from the same representation
    outside = searcher.for_feature(feats[7])
    assert np.array_equal(outside.sets, index.sets[7]) and np.array_equal(outside.signature, index.signatures[7])


def _code_reference(x: np.ndarray, centroids: np.ndarray, size: int) -> np.ndarray:
    """The slow reference: int64 products of the codes, best first, equal products by ascending id."""
    products = assign.row_codes(x).astype(np.int64) @ assign.centroid_codes(centroids).astype(np.int64).T
    ids = np.arange(len(centroids))
    return np.stack([np.lexsort((ids, -row))[:size] for row in products])


def test_nearest_centroid_sets_hold_the_nearest_centroids_by_their_codes():
    feats, _ = synthetic_features(2000, 1)
    stats = set_statistics(feats)
    rep = NearestCentroids(count=50, set_size=6)
    centroids = rep.fit(feats, stats, seed=1)
    assert centroids.shape == (50, feats.shape[1]) and np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    assert np.array_equal(centroids, rep.fit(feats, stats, seed=1))  # seeded: the same vocabulary every time
    sets = rep.sets(feats[:300], stats, centroids)
    centred = centred_unit(feats[:300], stats)
    assert sets.shape == (300, 6)
    assert np.array_equal(sets, np.sort(_code_reference(centred, centroids, 6), axis=1))
    # the codes rank as cosine does, up to their rounding: most sets are the float nearest exactly
    floats = np.sort(np.argsort(-(centred @ centroids.T), axis=1)[:, :6], axis=1)
    assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(sets, floats)]) / 6 >= 0.97


def test_centroid_assignment_is_the_same_on_every_path(monkeypatch):
    """torch's int8 product where it is exact here, a float product of the same integers elsewhere: the same
    sets either way, and for a lone query row as for a batch."""
    feats, _ = synthetic_features(600, 3)
    stats = set_statistics(feats)
    centroids = NearestCentroids(count=64, set_size=12).fit(feats, stats, seed=2)
    x = centred_unit(feats, stats)
    fast = assign.Nearest(centroids)(x, 12)
    monkeypatch.setattr(assign, "_int8_products_exact", lambda: False)
    slow = assign.Nearest(centroids)(x, 12)
    alone = np.concatenate([assign.Nearest(centroids)(x[i : i + 1], 12)[0] for i in range(20)])
    assert np.array_equal(fast[0], slow[0]) and np.array_equal(fast[0][:20], alone)
    assert np.array_equal(np.sort(fast[0], axis=1), np.sort(_code_reference(x, centroids, 12), axis=1))
    # the cosines handed back (k-means restarts empty centroids by them) are the float ones, up to rounding
    assert np.allclose(fast[1], np.take_along_axis(x @ centroids.T, fast[0], axis=1), atol=0.02)


def test_equal_centroid_scores_go_to_the_lower_id():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((6, 32)).astype(np.float32)
    centroids = np.concatenate([base, base])  # ids 6..11 repeat 0..5: every score ties with its twin
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    x = rng.standard_normal((40, 32)).astype(np.float32)
    ids, _ = assign.Nearest(centroids)(x, 3)  # the best pair, then one of the second pair: its lower id
    assert (np.sort(ids, axis=1)[:, 1] < 6).all() and (np.sort(ids, axis=1)[:, 2] >= 6).all()
    for size in (3, 7):  # seven of twelve: the boundary splits a tied pair too
        got, _ = assign.Nearest(centroids)(x, size)
        assert np.array_equal(np.sort(got, axis=1), np.sort(_code_reference(x, centroids, size), axis=1))


def test_the_centroid_count_follows_the_collection_size():
    assert centroid_count(10) == 10  # never more centroids than images
    assert centroid_count(1_000) == MIN_CENTROIDS
    assert centroid_count(50_000) == 50_000 // 50
    assert centroid_count(10_000_000) == MAX_CENTROIDS
