"""The compiled rerank (``search/compiled.py``) answers what the numpy path answers.

Its pool is checked against the brute-force reference of the prefix semantics (``test_query_path._reference``);
its answers against the numpy path's, row for row, with cosines equal to ~1e-13 (float64 sums of exact products in
two orders).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from stl10_similarity import numba_modules
from stl10_similarity.index import index_in_memory
from stl10_similarity.params import IndexParams
from stl10_similarity.search import OVERSHOOT, Searcher, compiled
from tests.test_query_path import _features, _reference


def _pair(feats: np.ndarray, candidates: int, params: IndexParams = IndexParams()) -> tuple[Searcher, Searcher]:
    index = index_in_memory(feats, np.zeros(len(feats), np.int16), [], params)
    fast, slow = Searcher(index, candidates, compiled=True), Searcher(index, candidates, compiled=False)
    assert fast.uses_compiled and not slow.uses_compiled
    return fast, slow


def _noise(n: int, seed: int) -> np.ndarray:
    """Rows with no strong direction: the projection holds little, rerank chooses by shared top-K dimensions."""
    x = np.abs(np.random.default_rng(seed).normal(size=(n, 1280))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("params", [IndexParams(), IndexParams(sets="top-dims", top_k=40, trees=8, num_perm=32),
                                    IndexParams(centroids=40, set_size=6, trees=16, num_perm=64)])
def test_the_compiled_pool_is_the_prefix_semantics(params):
    feats = _features(600, seed=3)
    fast, _ = _pair(feats, 40, params)
    arrays, kernels = fast.parts.shards[0].compiled_arrays, compiled.load()
    sigs = np.asarray(fast.index.signatures)
    trimmed = 0
    for row in np.random.default_rng(5).choice(len(feats), 12, replace=False).tolist():
        q = fast.for_row(row)
        for budget in (5, 60, 300, 2000):
            # keep and want every row of the pool: the answer is the pool itself, ordered by cosine
            rows, _, pool = arrays.rerank(kernels, q.signature, row, q.feature, q.topk, budget, OVERSHOOT, 600, 600,
                                          True)
            want = _reference(sigs, params.trees, q.signature, row, budget)
            assert sorted(rows.tolist()) == want and pool == len(want)
            trimmed += pool == budget  # an overshooting depth, trimmed to the budget
    assert trimmed  # the trimming rule was exercised
    outside = fast.for_feature(_features(1, seed=9)[0])  # a query that is no row of the index
    rows, _, pool = arrays.rerank(kernels, outside.signature, -1, outside.feature, outside.topk, 100, OVERSHOOT, 600,
                                  600, True)
    assert sorted(rows.tolist()) == _reference(sigs, params.trees, outside.signature, None, 100)


@pytest.mark.parametrize("data", ["clustered", "noise"])
@pytest.mark.parametrize("candidates", [40, 800])
def test_compiled_rerank_answers_as_the_numpy_path(data, candidates):
    feats = _features(3000, seed=11) if data == "clustered" else _noise(3000, seed=12)
    fast, slow = _pair(feats, candidates)
    assert (fast.projection_keep is None) == (data == "noise")  # both prefilters are covered
    queries = [fast.for_row(row) for row in range(0, 3000, 41)]
    queries += [fast.for_feature(f) for f in _features(5, seed=13)]  # from outside the collection
    for q in queries:
        for k in (1, 10, 60, 100):  # up to 64 wanted are kept in a short list, more are sorted
            rows, cosines, examined = fast.search(q, k, "rerank")
            rows1, cosines1, examined1 = slow.search(q, k, "rerank")
            assert np.array_equal(rows, rows1) and examined == examined1
            assert np.allclose(cosines, cosines1, rtol=0, atol=1e-12)
            assert np.all(np.diff(cosines) <= 0) and q.exclude not in rows.tolist()


def test_exact_copies_tie_by_the_smaller_row_on_both_paths():
    base = _features(1200, seed=21)
    feats = np.concatenate([base, base[::-1]])  # every image twice: equal scores and equal cosines
    fast, slow = _pair(feats, 200)
    tied = 0
    for row in range(0, 2400, 97):
        q = fast.for_row(row)
        rows, cosines, _ = fast.search(q, 10, "rerank")
        rows1, _, _ = slow.search(q, 10, "rerank")
        assert np.array_equal(rows, rows1)
        ties = np.flatnonzero(np.diff(cosines) == 0)
        assert np.all(rows[ties] < rows[ties + 1])
        tied += len(ties)
    assert tied >= 25  # most results come in equal pairs


def test_a_compiled_batch_answers_as_the_queries_one_by_one():
    feats = _features(3000, seed=8)
    fast, _ = _pair(feats, 200)
    queries = [fast.for_row(row) for row in range(0, 3000, 7)] + [fast.for_feature(f) for f in _features(9, seed=2)]
    alone = [fast.search(q, 10, "rerank") for q in queries]
    batch = fast.search_many(queries, 10, "rerank", threads=3)  # blocks of queries on threads, indexed and not
    assert len(batch) == len(alone)
    for (rows, cosines, examined), (rows1, cosines1, examined1) in zip(batch, alone):
        assert np.array_equal(rows, rows1) and np.array_equal(cosines, cosines1) and examined == examined1
    results = fast.query_many(queries[:5], 10, "rerank")
    assert [[m.id for m in r.results] for r in results] == [alone[i][0].tolist() for i in range(5)]


def test_a_pool_smaller_than_k_is_widened_as_on_the_numpy_path():
    feats = _features(300, seed=4)
    fast, slow = _pair(feats, 5)
    q = fast.for_row(7)
    rows, _, examined = fast.search(q, 299, "rerank")  # every other row: more than any pool holds
    rows1, _, examined1 = slow.search(q, 299, "rerank")
    assert len(rows) == 299 and np.array_equal(rows, rows1) and examined == examined1


def test_what_runs_compiled(monkeypatch):
    feats = _features(600, seed=5)
    index = index_in_memory(feats, np.zeros(len(feats), np.int16), [], IndexParams())
    assert Searcher(index, compiled=True).uses_compiled
    assert not Searcher(index, compiled=False).uses_compiled
    wide = index_in_memory(feats, np.zeros(len(feats), np.int16), [], IndexParams(centroids=40, trees=2, num_perm=64))
    assert wide.tree_keys.dtype.kind == "S" and not Searcher(wide, compiled=True).uses_compiled  # byte-string bands
    monkeypatch.setenv(compiled.DISABLE_ENV, "1")
    assert compiled.load() is None and not Searcher(index, compiled=True).uses_compiled
    q = Searcher(index).for_row(3)
    assert Searcher(index).search(q, 5, "rerank")[0].size == 5  # the numpy path answers


@pytest.mark.slow
def test_one_off_queries_and_small_batches_do_not_load_numba_and_big_batches_do():
    script = (
        "import sys, numpy as np\n"
        "from stl10_similarity.index import index_in_memory\n"
        "from stl10_similarity.params import COMPILED_BATCH\n"
        "from stl10_similarity.search import Searcher\n"
        "from tests.test_query_path import _features\n"
        "feats = _features(COMPILED_BATCH + 1, seed=1)\n"
        "s = Searcher(index_in_memory(feats, np.zeros(len(feats), np.int16), []))\n"
        "s.search(s.for_row(3), 5, 'rerank')\n"
        "s.search_many([s.for_row(r) for r in range(20)], 5, 'rerank')\n"
        "assert 'numba' not in sys.modules, 'a single query or a small batch loaded numba'\n"
        "s.search_many([s.for_row(r) for r in range(COMPILED_BATCH)], 5, 'rerank')\n"
        "assert 'numba' in sys.modules and s.uses_compiled\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_kernels_that_cannot_compile_leave_the_numpy_path_answering(monkeypatch):
    feats = _features(400, seed=6)
    index = index_in_memory(feats, np.zeros(len(feats), np.int16), [], IndexParams())
    want = Searcher(index, 40, compiled=False).search(Searcher(index, 40).for_row(3), 10, "rerank")

    def broken(kernels):
        raise RuntimeError("LLVM says no")

    monkeypatch.setattr(numba_modules, "_loaded", {})  # this process has not loaded them yet
    monkeypatch.setattr(compiled, "_warm", broken)
    with pytest.warns(RuntimeWarning, match="LLVM says no"):
        assert compiled.load() is None
    searcher = Searcher(index, 40, compiled=True)
    assert not searcher.uses_compiled
    rows, cosines, examined = searcher.search(searcher.for_row(3), 10, "rerank")
    assert np.array_equal(rows, want[0]) and examined == want[2]


def test_the_union_writes_one_slot_past_its_rows_at_most():
    feats = _features(300, seed=4)
    fast, _ = _pair(feats, 5)
    arrays, kernels = fast.parts.shards[0].compiled_arrays, compiled.load()
    n, trees = arrays.n, len(arrays.flat_order) // arrays.n
    # every tree's whole range at depth 1: each row comes up once per tree, so most entries are repeats
    lo = np.zeros((trees, 2), np.int64)
    hi = np.zeros((trees, 2), np.int64)
    lo[:, 1], hi[:, 1] = np.arange(trees) * n, np.arange(1, trees + 1) * n
    active = np.ones((trees, 2), np.bool_)
    mark = np.zeros(n, np.int8)
    for exclude in (-1, 7):
        out = np.full(n + 2, -5, np.int32)
        count = kernels.union(arrays.flat_order, lo, hi, active, 1, exclude, mark, out)
        assert count == n - (exclude >= 0) and sorted(out[:count].tolist()) == [r for r in range(n) if r != exclude]
        assert out[n + 1] == -5  # the scratch row buffer holds n + 1
        assert mark.sum() == count and (exclude < 0 or mark[exclude] == 0)
        mark[:] = 0
