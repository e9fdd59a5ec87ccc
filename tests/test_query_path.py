"""The fast query path returns exactly the candidates the forest's prefix semantics define.

The reference below finds, by brute force over the signatures, every row sharing the query's first ``d`` MinHash
values of a tree's band, and applies the gathering rule (deepest depth whose ranges can reach the budget, shallower
until the budget is met, an overshooting depth trimmed by the number of trees a row matched in) with Python sets.
The index under test finds the same rows with band codes, one ``searchsorted`` and a sort-free union.
"""

from __future__ import annotations

import numpy as np
import pytest

from stl10_similarity.index import index_in_memory
from stl10_similarity.index.forest import BandCodes, prefix_arrays
from stl10_similarity.params import IndexParams
from stl10_similarity.search import OVERSHOOT, Searcher


def _features(n: int, seed: int, clusters: int = 12) -> np.ndarray:
    """Clustered unit rows, so prefixes are shared at every depth (not only the first)."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(clusters, 1280)))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * np.abs(rng.normal(size=(n, 1280)))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _reference(signatures: np.ndarray, trees: int, query: np.ndarray, exclude: int | None, budget: int) -> list[int]:
    depth = signatures.shape[1] // trees

    def matches(d: int) -> dict[int, int]:
        votes: dict[int, int] = {}
        for t in range(trees):
            band = slice(t * depth, t * depth + d)
            for row in np.flatnonzero((signatures[:, band] == query[band]).all(axis=1)).tolist():
                if row != exclude:
                    votes[row] = votes.get(row, 0) + 1
        return votes

    totals = {d: sum(matches(d).values()) for d in range(1, depth + 1)}
    reach = [d for d in totals if totals[d] >= budget]
    for d in range(max(reach) if reach else 1, 0, -1):
        votes = matches(d)
        if len(votes) < budget and d > 1:
            continue
        keys = set(votes)
        if len(keys) > OVERSHOOT * budget:
            kept = set(matches(d + 1)) if d < depth else set()
            fresh = sorted(keys - kept, key=lambda row: (-votes[row], row))
            keys = kept | set(fresh[: max(budget - len(kept), 0)])
        return sorted(keys)
    return []


@pytest.mark.parametrize("params", [IndexParams(), IndexParams(sets="top-dims", top_k=40, trees=8, num_perm=32),
                                    IndexParams(centroids=40, set_size=6, trees=16, num_perm=64)])
def test_fast_candidates_are_the_prefix_semantics(params):
    feats = _features(600, seed=3)
    index = index_in_memory(feats, np.zeros(len(feats), np.int16), [], params)
    assert index.tree_keys.dtype == np.uint64  # these all fit in band codes
    searcher = Searcher(index, candidates=40)
    rng = np.random.default_rng(5)
    for row in rng.choice(len(feats), 12, replace=False).tolist():
        q = searcher.for_row(row)
        for budget in (5, 60, 300, 2000):
            got = np.sort(searcher.forest_candidates(q, budget)).tolist()
            assert got == _reference(np.asarray(index.signatures), params.trees, q.signature, row, budget)
    outside = searcher.for_feature(_features(1, seed=9)[0])  # a query that is no row of the index
    got = np.sort(searcher.forest_candidates(outside, 100)).tolist()
    assert got == _reference(np.asarray(index.signatures), params.trees, outside.signature, None, 100)


def test_band_codes_sort_as_datasketchs_byte_strings_and_give_the_same_ranges():
    feats = _features(500, seed=4)
    index = index_in_memory(feats, np.zeros(len(feats), np.int16), [], IndexParams())
    sigs, table, trees = np.asarray(index.signatures), np.asarray(index.token_table), IndexParams().trees
    byte_keys, byte_order = prefix_arrays(sigs, trees)
    code_keys, code_order = prefix_arrays(sigs, trees, BandCodes(table, trees))
    assert np.array_equal(byte_order, code_order)  # the same trees, row for row
    assert np.all(code_keys.ravel()[1:] >= code_keys.ravel()[:-1])  # the trees end to end are one sorted array
    # an index with byte-string bands (as built before the codes) answers every range alike
    old = index_in_memory(feats, np.zeros(len(feats), np.int16), [], IndexParams())
    old.tree_keys, old.tree_order = byte_keys, byte_order
    new_searcher, old_searcher = Searcher(index), Searcher(old)
    for row in range(0, 500, 37):
        new_q, old_q = new_searcher.for_row(row), old_searcher.for_row(row)
        new_shard, old_shard = new_searcher.parts.shards[0], old_searcher.parts.shards[0]
        assert np.array_equal(new_shard.ranges(new_q), old_shard.ranges(old_q))
        for method in ("rerank", "forest"):
            assert np.array_equal(new_searcher.search(new_q, 10, method)[0], old_searcher.search(old_q, 10, method)[0])


def test_band_codes_refuse_what_does_not_fit_and_values_outside_the_table():
    feats = _features(200, seed=6)
    wide = index_in_memory(feats, np.zeros(len(feats), np.int16), [], IndexParams(centroids=40, trees=2, num_perm=64))
    assert wide.tree_keys.dtype.kind == "S"  # 32 values of 6 bits per band: datasketch's byte strings instead
    assert Searcher(wide).search(Searcher(wide).for_row(3), 5, "rerank")[0].size == 5
    index = index_in_memory(feats, np.zeros(len(feats), np.int16), [], IndexParams())
    codes = BandCodes(np.asarray(index.token_table), IndexParams().trees)
    bad = np.asarray(index.signatures[:2]).copy()
    bad[0, 0] ^= 1  # a hash value no token of this table makes
    with pytest.raises(ValueError, match="not in the token table"):
        codes.band(bad, 0)


def test_a_batch_on_threads_answers_as_the_queries_one_by_one():
    feats = _features(3000, seed=8)
    index = index_in_memory(feats, np.zeros(len(feats), np.int16), [], IndexParams())
    searcher = Searcher(index)
    vectors = [searcher.for_row(row) for row in range(0, 3000, 7)]
    for method in ("rerank", "forest", "exact"):
        alone = [searcher.search(q, 10, method) for q in vectors]
        batch = searcher.search_many(vectors, 10, method, threads=4)  # each thread has its own scratch arrays
        assert len(batch) == len(alone)
        for (rows, scores, examined), (rows1, scores1, examined1) in zip(batch, alone):
            assert np.array_equal(rows, rows1) and np.array_equal(scores, scores1) and examined == examined1


def test_rerank_chooses_by_the_projection_only_where_its_directions_hold_the_variance():
    feats = _features(2000, seed=10, clusters=6)  # a few strong directions: the projection holds most
    strong = Searcher(index_in_memory(feats, np.zeros(len(feats), np.int16), [], IndexParams()))
    assert strong.parts.shards[0].projection_share() >= 0.7 and strong.projection_keep == 1 / 20
    rng = np.random.default_rng(0)
    noise = np.abs(rng.normal(size=(2000, 1280))).astype(np.float32)  # no direction stands out
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    weak = Searcher(index_in_memory(noise, np.zeros(len(noise), np.int16), [], IndexParams()))
    assert weak.parts.shards[0].projection_share() < 0.5 and weak.projection_keep is None
    assert weak.reranked(10) == weak.candidates  # the top-K overlap keeps the budget, as before the projection
    result = strong.query(strong.for_row(5), 10, "rerank")
    assert result.params["prefilter"] == "projection" and result.params["reranked"] == int(np.ceil(strong.pool / 20))
    assert weak.query(weak.for_row(5), 10, "rerank").params["prefilter"] == "top-k overlap"
