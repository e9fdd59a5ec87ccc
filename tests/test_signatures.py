"""Bulk MinHash is bit-identical to datasketch's own MinHash.update."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stl10_similarity.index.signatures import (
    datasketch_signature,
    minhash_signatures,
    permuted_token_table,
    set_statistics,
    top_k_sets,
)


def test_random_sets_match_datasketch():
    rng = np.random.default_rng(7)
    table = permuted_token_table(128)
    sets = np.sort(np.stack([rng.choice(1280, 50, replace=False) for _ in range(300)]), axis=1).astype(np.uint16)
    ours = minhash_signatures(sets, table, chunk=64, threads=2)  # several chunks on two threads
    reference = np.stack([datasketch_signature(s, 128) for s in sets])
    assert ours.dtype == reference.dtype == np.uint32
    assert np.array_equal(ours, reference)


@settings(max_examples=40, deadline=None)
@given(
    members=st.lists(st.integers(0, 1279), min_size=1, max_size=60, unique=True),
    num_perm=st.sampled_from([8, 16, 64, 96]),
)
def test_any_set_matches_datasketch(members, num_perm):
    table = permuted_token_table(num_perm)
    ours = minhash_signatures(np.array([members]), table, threads=1)[0]
    assert np.array_equal(ours, datasketch_signature(np.array(members), num_perm))


def test_pipeline_signatures_match_datasketch(built_cache):
    """Each stored signature is datasketch's MinHash of the image's tokens (its nearest centroids' ids)."""
    sets = np.load(built_cache / "index" / "sets.npy")
    sigs = np.load(built_cache / "index" / "signatures.npy")
    universe = len(np.load(built_cache / "index" / "token_table.npy")) - 1
    assert universe == len(np.load(built_cache / "index" / "vocabulary.npy"))
    for row in range(0, len(sets), 9):
        tokens = sets[row][sets[row] != universe]
        assert len(tokens) == 12 and np.all(tokens < universe)
        assert np.array_equal(sigs[row], datasketch_signature(tokens, sigs.shape[1]))


def test_padded_sets_of_any_size_match_datasketch():
    """Rows shorter than the array are padded with the padding token, which never changes a signature."""
    from stl10_similarity.index.signatures import token_table

    rng = np.random.default_rng(5)
    universe, width = 300, 20
    table = token_table(64, universe)
    rows, members = [], []
    for size in [0, 1, 5, 19, 20] * 4:
        tokens = np.sort(rng.choice(universe, size, replace=False))
        members.append(tokens)
        rows.append(np.concatenate([tokens, np.full(width - size, universe)]))
    ours = minhash_signatures(np.array(rows, dtype=np.uint16), table, chunk=7)
    for sig, tokens in zip(ours, members):
        assert np.array_equal(sig, datasketch_signature(tokens, 64))  # the empty set: datasketch's empty MinHash


def test_top_k_sets_are_the_largest_dimensions():
    x = np.array([[0.1, 0.9, 0.3, 0.8, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0]], np.float32)
    assert top_k_sets(x, 2).tolist() == [[1, 3], [0, 1]]
    assert top_k_sets(x, 5).tolist() == [[0, 1, 2, 3, 4]] * 2


def test_centred_sets_use_collection_statistics():
    x = np.array([[10.0, 1.0, 0.5], [10.0, 0.0, 0.6], [10.0, 0.9, 0.4]], np.float32)
    stats = set_statistics(x)
    assert np.allclose(stats[0], x.mean(0))
    # raw: dimension 0 wins everywhere; centred: it is never above its own mean
    assert top_k_sets(x, 1).ravel().tolist() == [0, 0, 0]
    assert top_k_sets(x, 1, "centered", stats).ravel().tolist() == [1, 2, 1]


def test_bulk_forest_equals_datasketch_add_and_index():
    import pickle

    from datasketch import MinHashLSHForest

    from stl10_similarity.index.forest import Sketch as _Sketch
    from stl10_similarity.index.forest import build_forest, prefix_arrays

    rng = np.random.default_rng(3)
    sigs = rng.integers(0, 2**32, (300, 64), dtype=np.uint32)
    sigs[10] = sigs[11]  # identical signatures share a bucket
    reference = MinHashLSHForest(num_perm=64, l=8)
    for key, row in enumerate(sigs):
        reference.add(key, _Sketch(row))
    reference.index()
    ours = build_forest(sigs, 8)
    assert ours.keys == reference.keys
    assert [dict(t) for t in ours.hashtables] == [dict(t) for t in reference.hashtables]
    assert ours.sorted_hashtables == reference.sorted_hashtables
    restored = pickle.loads(pickle.dumps(ours))
    assert restored.keys == reference.keys and restored.sorted_hashtables == reference.sorted_hashtables
    assert sorted(restored.query(_Sketch(sigs[10]), 2)) == [10, 11]
    assert isinstance(restored, MinHashLSHForest)
    # the sorted arrays queries search hold datasketch's trees, key for key
    keys, order = prefix_arrays(sigs, 8)
    for t in range(8):
        assert [bytes(k).ljust(32, b"\0") for k in keys[t]] == [h for h in reference.sorted_hashtables[t]
                                                                 for _ in reference.hashtables[t][h]]
        assert order[t].tolist() == [key for h in reference.sorted_hashtables[t] for key in reference.hashtables[t][h]]


def test_index_pickle_is_a_datasketch_forest_of_the_signatures(built_cache):
    import pickle

    from datasketch import MinHashLSHForest

    from stl10_similarity.index.forest import Sketch

    forest = pickle.loads((built_cache / "index" / "forest.pkl").read_bytes())
    sigs = np.load(built_cache / "index" / "signatures.npy")
    order = np.load(built_cache / "index" / "tree_order.npy")
    assert isinstance(forest, MinHashLSHForest) and len(forest.keys) == len(sigs)
    for t in range(forest.l):
        assert order[t].tolist() == [k for h in forest.sorted_hashtables[t] for k in forest.hashtables[t][h]]
    assert 5 in forest.query(Sketch(sigs[5]), 3)


def test_set_intersections_count_shared_members():
    from stl10_similarity.index.sets import set_intersections, set_sizes

    rng = np.random.default_rng(4)
    sets = np.sort(np.stack([rng.choice(1280, 50, replace=False) for _ in range(30)]), axis=1).astype(np.uint16)
    counts = set_intersections(sets[0], sets, 1280)
    assert counts.tolist() == [len(np.intersect1d(sets[0], s)) for s in sets] and counts[0] == 50
    assert set_intersections(sets[0], sets[:0], 1280).shape == (0,)
    padded = sets.copy()
    padded[:, 40:] = 1280  # the padding token: never shared, never counted
    assert set_intersections(padded[0], padded, 1280)[0] == 40 and set_sizes(padded, 1280).tolist() == [40] * 30


def _stable_top_k(x: np.ndarray, k: int) -> np.ndarray:
    """The reference: each row's k largest, ties to the smaller dimension, ascending."""
    return np.sort(np.argsort(-x, axis=1, kind="stable")[:, :k], axis=1).astype(np.uint16)


def test_the_compiled_top_k_picks_the_largest_with_ties_to_the_smaller_dimension():
    rng = np.random.default_rng(3)
    smooth = rng.standard_normal((700, 1280)).astype(np.float32)
    ties = rng.integers(-3, 4, (300, 1280)).astype(np.float32)  # whole runs of equal values around the cut
    ties[:20] = 0.0
    ties[:10, ::2] = -0.0  # equal to 0.0
    extremes = (rng.standard_normal((50, 64)) * 1e-38).astype(np.float32)  # subnormals too
    extremes[:, 0], extremes[:, 1] = np.inf, -np.inf
    for x, k in ((smooth, 100), (ties, 100), (ties, 1), (ties, 1279), (extremes, 7)):
        got = top_k_sets(x, k, chunk=128, compiled=True)  # several chunks on every core
        assert np.array_equal(got, _stable_top_k(x, k))
    stats = set_statistics(smooth)
    for basis in ("raw", "centered", "standardized"):  # without ties, the compiled select and torch agree
        assert np.array_equal(top_k_sets(smooth, 100, basis, stats, compiled=True),
                              top_k_sets(smooth, 100, basis, stats))


def test_the_top_k_falls_back_to_torch_where_numba_is_off_or_broken(monkeypatch):
    from stl10_similarity import numba_modules
    from stl10_similarity.index import select_kernel, signatures
    from stl10_similarity.params import NO_COMPILED_ENV

    x = np.random.default_rng(4).standard_normal((50, 300)).astype(np.float32)
    want = top_k_sets(x, 30)
    monkeypatch.setenv(NO_COMPILED_ENV, "1")
    assert signatures._compiled_select() is None and np.array_equal(top_k_sets(x, 30, compiled=True), want)
    monkeypatch.delenv(NO_COMPILED_ENV)

    def broken(block, k, out):
        raise RuntimeError("LLVM says no")

    monkeypatch.setattr(numba_modules, "_loaded", {})  # not yet loaded in this process
    monkeypatch.setattr(select_kernel, "top_k_rows", broken)
    with pytest.warns(RuntimeWarning, match="LLVM says no"):
        assert np.array_equal(top_k_sets(x, 30, compiled=True), want)


def test_a_big_build_picks_its_top_k_compiled_with_the_same_index(monkeypatch):
    from stl10_similarity.index import index_in_memory, loaded
    from stl10_similarity.params import IndexParams

    feats = np.random.default_rng(5).standard_normal((600, 1280)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    labels = np.zeros(len(feats), np.int16)
    small = index_in_memory(feats, labels, [], IndexParams())
    monkeypatch.setattr(loaded, "COMPILED_TOP_K_ROWS", 100)  # 600 rows now count as a big build
    calls = []
    real = loaded.top_k_sets
    monkeypatch.setattr(loaded, "top_k_sets", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    big = index_in_memory(feats, labels, [], IndexParams())
    assert calls == [{"compiled": True}]
    assert np.array_equal(big.topk, small.topk) and np.array_equal(big.signatures, small.signatures)
