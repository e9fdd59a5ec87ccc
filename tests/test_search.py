"""Query invariants over random collections: never the query, never fewer than min(k, N-1), ranks sorted."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import invoke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stl10_similarity.cli import main
from stl10_similarity.index import index_in_memory
from stl10_similarity.params import METHODS, IndexParams
from stl10_similarity.search import Searcher

_CACHE: dict[tuple[int, int], object] = {}


def _index(n: int, seed: int):
    if (n, seed) not in _CACHE:
        rng = np.random.default_rng(seed)
        x = np.abs(rng.normal(size=(n, 1280))).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        _CACHE[(n, seed)] = index_in_memory(x, (np.arange(n) % 10).astype(np.int16), [str(i) for i in range(10)],
                                            IndexParams(top_k=30, num_perm=32, trees=4))
    return _CACHE[(n, seed)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.sampled_from([2, 3, 17, 120]), seed=st.integers(0, 2), k=st.integers(1, 130),
       method=st.sampled_from(METHODS), candidates=st.integers(1, 50), query=st.integers(0, 10_000))
def test_results_are_complete_sorted_and_exclude_the_query(n, seed, k, method, candidates, query):
    searcher = Searcher(_index(n, seed), candidates)
    qid = query % n
    result = searcher.query(searcher.for_row(qid), k, method)
    ids = [m.id for m in result.results]
    assert qid not in ids
    assert len(ids) == len(set(ids)) == min(k, n - 1)
    assert [m.rank for m in result.results] == list(range(1, len(ids) + 1))
    # each method's own ranking score never increases down the list
    score = {"exact": "cosine", "rerank": "cosine", "auto": "cosine"}.get(method, "jaccard_estimate")
    values = [getattr(m, score) for m in result.results]
    assert values == sorted(values, reverse=True)


def test_exact_method_is_brute_force():
    index = _index(120, 0)
    searcher = Searcher(index, 10)
    q = searcher.for_row(7)
    found, examined = searcher.search_ids(q, 5, "exact")
    scores = np.asarray(index.features) @ np.asarray(index.features[7])
    scores[7] = -np.inf
    assert found.tolist() == np.argsort(-scores)[:5].tolist() and examined == 120


def test_queries_on_many_threads_get_the_answers_they_get_alone():
    """The server answers on several threads at once: no answer may depend on what else is being asked."""
    searcher = Searcher(_index(120, 2), 20)
    asks = [(row, method) for row in range(0, 120, 3) for method in ("exact", "rerank", "forest")]

    def answer(ask: tuple[int, str]) -> list:
        return searcher.query(searcher.for_row(ask[0]), 10, ask[1]).to_dict()["results"]

    alone = [answer(ask) for ask in asks]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(answer, asks * 3)) == alone * 3


def test_external_feature_gets_the_collection_treatment():
    index = _index(120, 1)
    searcher = Searcher(index, 10)
    inside = searcher.for_row(3)
    outside = searcher.for_feature(np.asarray(index.features[3]))
    assert np.array_equal(inside.topk, outside.topk) and np.array_equal(inside.signature, outside.signature)
    assert searcher.search_ids(outside, 1, "exact")[0].tolist() == [3]


def test_bench_smoke_json(tmp_path):
    doc = json.loads(invoke("-q", "bench", "--n", "400", "--queries", "20", "--baseline-n", "50", "--json").stdout)
    assert {"n", "k", "queries", "machine", "signatures", "methods"} <= set(doc)
    assert doc["n"] == 400 and doc["signatures"]["baseline_n"] == 50 and doc["signatures"]["identical_to_datasketch"]
    for key in ("index_build_seconds", "baseline_seconds", "speedup"):
        assert doc["signatures"][key] > 0
    names = [m["name"] for m in doc["methods"]]
    assert names[0] == "exact (numpy)" and any(n.startswith("rerank") for n in names)
    assert any(n.startswith("previous index: top-dims, 8 trees") for n in names)  # the index before, side by side
    for m in doc["methods"]:
        assert {"name", "build_seconds", "peak_rss_mb", "p50_ms", "p99_ms", "qps", "recall_at_k",
                "bytes_per_image"} <= set(m)
        assert 0.0 <= m["recall_at_k"] <= 1.0 and m["p50_ms"] <= m["p99_ms"]
    assert doc["methods"][0]["recall_at_k"] == 1.0
    assert doc["params"]["sets"] == "centroids" and doc["params"]["features"] == "synthetic"
    # the compiled rerank is timed, and beside it the numpy path one-off queries take: the same answers
    assert doc["params"]["compiled"] is True and doc["params"]["compiled_load_seconds"] >= 0
    by_name = {m["name"]: m for m in doc["methods"]}
    assert by_name["rerank (candidates 800, numpy path)"]["recall_at_k"] == by_name["rerank (candidates 800)"]["recall_at_k"]
    text = invoke("-q", "bench", "--n", "400", "--queries", "5", "--baseline-n", "20").stdout
    assert "rerank: compiled (loaded in" in text
    assert text.rstrip().endswith("the default method (auto) at this size: exact (numpy) (exact up to 20,000 images)")


def test_bench_keeps_the_hnsw_graph_it_built_for_later_runs(tmp_path):
    pytest.importorskip("faiss", reason="faiss-cpu is part of the test extra")
    from stl10_similarity.synthetic import synthetic_features

    feats, _ = synthetic_features(500, 5)
    np.save(tmp_path / "f.npy", feats)
    args = ["bench", "--features", str(tmp_path / "f.npy"), "--queries", "20", "--baseline-n", "10", "--budget", "50",
            "--json", "--hnsw-cache", str(tmp_path / "graphs")]
    first = invoke(*args)
    kept = list((tmp_path / "graphs").glob("hnsw-M32-500x1280-*.faiss"))
    assert first.exit_code == 0 and len(kept) == 1 and kept[0].with_suffix(".json").is_file()
    assert "building it" in first.stderr
    second = invoke(*args)
    assert "loading the graph built before" in second.stderr
    rows = [{m["name"]: m for m in json.loads(run.stdout)["methods"]} for run in (first, second)]
    for name in ("faiss HNSW M=32 efSearch 16", "faiss HNSW M=32 efSearch 64"):
        assert rows[0][name]["recall_at_k"] == rows[1][name]["recall_at_k"] > 0.5
        assert rows[0][name]["build_seconds"] == pytest.approx(rows[1][name]["build_seconds"], abs=1e-3)
    np.save(tmp_path / "f.npy", feats[::-1].copy())  # other features: another graph
    assert invoke(*args).exit_code == 0 and len(list((tmp_path / "graphs").glob("*.faiss"))) == 2


def test_bench_on_features_the_user_brings(tmp_path):
    from stl10_similarity.synthetic import synthetic_features

    feats, _ = synthetic_features(300, 4)
    path = tmp_path / "mine.npy"
    np.save(path, (feats * 3).astype(np.float16))  # float16 and not normalised: the bench normalises them
    doc = json.loads(invoke("-q", "bench", "--features", str(path), "--queries", "30", "--baseline-n", "20",
                            "--budget", "50", "--json").stdout)
    assert doc["n"] == 300 and doc["queries"] == 30 and doc["params"]["features"] == "given"
    methods = {m["name"]: m for m in doc["methods"]}
    assert methods["exact (numpy)"]["recall_at_k"] == 1.0
    assert 0.0 < methods["rerank (candidates 50)"]["recall_at_k"] <= 1.0
    assert methods["rerank (candidates 50)"]["bytes_per_image"] > 0
    if _has_faiss():
        assert any(name.startswith("faiss HNSW") for name in methods)
        assert any(name.startswith("faiss IVF-Flat") for name in methods)
    text = invoke("-q", "bench", "--features", str(path), "--queries", "5", "--baseline-n", "5").stdout
    assert "n=300 (given features)" in text
    # bad arrays are refused with one line and exit 2
    np.save(tmp_path / "ints.npy", np.ones((300, 8), dtype=np.int64))
    bad = np.ones((300, 8), dtype=np.float32)
    bad[7] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "zero.npy", np.zeros((300, 8), dtype=np.float32))
    np.save(tmp_path / "flat.npy", np.ones(300, dtype=np.float32))
    for name, says in (("ints", "must be float32 or float16"), ("nan", "NaN or infinite"), ("zero", "row 0 is all zeros"),
                       ("flat", "must be (N, D)")):
        result = CliRunner().invoke(main, ["bench", "--features", str(tmp_path / f"{name}.npy")])
        assert result.exit_code == 2 and says in result.stderr and result.stderr.count("\n") == 1, result.stderr
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    result = CliRunner().invoke(main, ["bench", "--features", str(tmp_path / "junk.npy")])
    assert result.exit_code == 2 and "not a readable .npy" in result.stderr


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def test_extract_bench_smoke(built_cache):
    result = invoke("-q", "bench", "--stage", "extract", "--n", "16", "--weights", "none", "--image-size", "64",
                    "--device", "cpu", "--cache-dir", str(built_cache))
    assert result.exit_code == 0
    for row in ("naive PIL fp32", "tensor fp32, BN kept", "tensor fp32, BN folded"):
        assert row in result.stdout


def test_auto_scans_small_collections_and_uses_the_forest_beyond(monkeypatch):
    index = _index(120, 0)
    searcher = Searcher(index, 10)
    q = searcher.for_row(5)
    exact = searcher.query(q, 7, "exact")
    auto = searcher.query(q, 7, "auto")
    assert auto.params["method"] == "auto" and auto.params["answered_by"] == "exact"
    assert [m.id for m in auto.results] == [m.id for m in exact.results]
    monkeypatch.setattr("stl10_similarity.search.searcher.SCAN_LIMIT", 100)  # 120 images is now "large"
    auto = searcher.query(q, 7, "auto")
    assert auto.params["answered_by"] == "rerank" and auto.candidates < index.n
    assert [m.id for m in auto.results] == [m.id for m in searcher.query(q, 7, "rerank").results]
