"""``stl10sim bench``: index and query speed, memory and recall at scale, on synthetic features.

Every figure is measured in one process, side by side, on the same vectors and queries, so ratios
hold even on a shared, noisy machine. The report says which machine it ran on.
"""

from __future__ import annotations

import os
import pickle
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np

from .forest import build_forest, prefix_arrays
from .index import LoadedIndex
from .index import index_params as recorded_params
from .params import BenchParams, IndexParams
from .progress import SILENT, Progress
from .search import Searcher
from .signatures import SEED, datasketch_signature, minhash_signatures, permuted_token_table, set_statistics, top_k_sets
from .synthetic import synthetic_features

EXACT_TIMED_QUERIES = 20  # brute force at 1M takes ~0.5 s a query: time a few, report batched qps too


# ---------------------------------------------------------------- measuring helpers


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss_growth(interval: float = 0.02) -> Iterator[dict[str, float]]:
    """Sample resident memory in a thread; yields a dict whose ``mb`` is the peak growth over the start."""
    out = {"mb": 0.0}
    start = rss_bytes()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            peak[0] = max(peak[0], rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], rss_bytes())
        out["mb"] = round((peak[0] - start) / 2**20, 1)


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = None
    try:
        with open("/proc/meminfo") as handle:
            mem = round(int(handle.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    from .artifacts import library_versions

    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": mem, "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d"), **library_versions()}


# ---------------------------------------------------------------- report


@dataclass
class MethodResult:
    name: str
    build_seconds: float
    peak_rss_mb: float
    p50_ms: float
    p99_ms: float
    qps: float
    recall_at_k: float
    mean_candidates: float
    timed_queries: int


@dataclass
class BenchReport:
    n: int
    k: int
    queries: int
    machine: dict[str, Any]
    params: dict[str, Any]
    data_seconds: float
    signatures: dict[str, Any]
    forest: dict[str, Any]
    methods: list[MethodResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _time_queries(run: Callable[[int], Any], query_ids: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    times, outputs = np.empty(len(query_ids)), []
    for row, qid in enumerate(query_ids):
        t0 = time.perf_counter()
        outputs.append(run(int(qid)))
        times[row] = time.perf_counter() - t0
    return times, outputs


def _recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth)]))


def _method(name: str, build: float, rss: float, times: np.ndarray, found: list[np.ndarray], truth: np.ndarray,
            candidates: float) -> MethodResult:
    return MethodResult(name=name, build_seconds=round(build, 3), peak_rss_mb=rss,
                        p50_ms=round(float(np.percentile(times, 50) * 1e3), 3),
                        p99_ms=round(float(np.percentile(times, 99) * 1e3), 3),
                        qps=round(float(len(times) / times.sum()), 1), recall_at_k=round(_recall(found, truth), 4),
                        mean_candidates=round(candidates, 1), timed_queries=len(times))


def exact_knn(features: np.ndarray, query_ids: np.ndarray, k: int, batch: int = 256) -> np.ndarray:
    """Exact cosine top-k (query excluded) by batched matrix products: the ground truth."""
    out = np.empty((len(query_ids), k), dtype=np.int64)
    for lo in range(0, len(query_ids), batch):
        q = query_ids[lo : lo + batch]
        scores = features[q] @ features.T
        scores[np.arange(len(q)), q] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        out[lo : lo + batch] = np.take_along_axis(top, order, 1)
    return out


# ---------------------------------------------------------------- the benchmark


def run_bench(
    bench: BenchParams = BenchParams(), index_params: IndexParams = IndexParams(), *, use_faiss: bool = True,
    progress: Progress = SILENT,
) -> BenchReport:
    """Build every method on ``bench.size`` synthetic vectors and measure it (see module docstring)."""
    n, k, queries, seed, baseline_n = bench.size, bench.k, bench.queries, bench.seed, bench.baseline_n
    budgets = tuple(sorted(bench.budgets))
    top_k, num_perm, trees, basis = index_params.top_k, index_params.num_perm, index_params.trees, index_params.basis
    step = lambda what: progress.note(f"bench: {what} ...")  # noqa: E731
    rng = np.random.default_rng(seed)
    step(f"generating {n:,} synthetic features")
    t0 = time.perf_counter()
    feats, clusters = synthetic_features(n, seed)
    data_seconds = time.perf_counter() - t0
    query_ids = np.sort(rng.choice(n, size=min(queries, n), replace=False))

    step("signatures: bulk (all) and datasketch's per-image update loop (baseline)")
    t0 = time.perf_counter()
    stats = set_statistics(feats)
    sets = top_k_sets(feats, top_k, basis, stats)
    sets_seconds = time.perf_counter() - t0
    table = permuted_token_table(num_perm, SEED)
    t0 = time.perf_counter()
    sigs = minhash_signatures(sets, table)
    sig_seconds = time.perf_counter() - t0
    baseline_n = min(baseline_n, n)
    t0 = time.perf_counter()
    bulk_same = minhash_signatures(sets[:baseline_n], table)
    bulk_same_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    baseline = [datasketch_signature(s, num_perm) for s in sets[:baseline_n]]
    baseline_seconds = time.perf_counter() - t0
    identical = bool(np.array_equal(np.stack(baseline[:1000]), bulk_same[:1000]))
    del baseline, bulk_same
    signatures = {
        "seconds": round(sig_seconds, 3), "top_k_sets_seconds": round(sets_seconds, 3),
        "baseline_seconds": round(baseline_seconds, 3), "baseline_n": baseline_n,
        "bulk_seconds_on_baseline_sets": round(bulk_same_seconds, 3),
        "speedup": round(baseline_seconds / max(bulk_same_seconds, 1e-9), 1), "identical_to_datasketch": identical,
    }

    step("forest: build, pickle, load")
    with peak_rss_growth() as rss:
        t0 = time.perf_counter()
        forest = build_forest(sigs, trees)
        forest_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "forest.pkl")
        t0 = time.perf_counter()
        with open(path, "wb") as handle:
            pickle.dump(forest, handle, protocol=pickle.HIGHEST_PROTOCOL)
        dump_seconds = time.perf_counter() - t0
        size_mb = os.path.getsize(path) / 2**20
        t0 = time.perf_counter()
        with open(path, "rb") as handle:
            forest = pickle.load(handle)
        load_seconds = time.perf_counter() - t0
    forest_info = {"build_seconds": round(forest_seconds, 3), "peak_rss_mb": rss["mb"],
                   "pickle_mb": round(size_mb, 1), "pickle_seconds": round(dump_seconds, 3),
                   "load_seconds": round(load_seconds, 3)}

    t0 = time.perf_counter()
    tree_keys, tree_order = prefix_arrays(sigs, trees)  # the sorted trees queries search (index artifacts)
    prepare_seconds = time.perf_counter() - t0
    forest_info["tree_arrays_seconds"] = round(prepare_seconds, 3)
    index = LoadedIndex(params=recorded_params(index_params),
                        features_params={}, class_names=[], features=feats, labels=clusters.astype(np.int16),
                        topk=sets, signatures=sigs, stats=stats, table=table, tree_keys=tree_keys,
                        tree_order=tree_order, _forest=forest)
    searcher = Searcher(index, budgets[0])

    step(f"exact cosine ground truth for {len(query_ids)} queries (batched)")
    with peak_rss_growth() as rss:
        t0 = time.perf_counter()
        truth = exact_knn(feats, query_ids, k)
        truth_seconds = time.perf_counter() - t0
    methods = []
    timed = query_ids[:EXACT_TIMED_QUERIES]
    times, found = _time_queries(lambda q: searcher.search_ids(searcher.for_row(q), k, "exact")[0], timed)
    exact = _method("exact (numpy)", 0.0, rss["mb"], times, found, truth[: len(timed)], n)
    exact.qps = round(len(query_ids) / truth_seconds, 1)  # batched throughput
    methods.append(exact)

    build = forest_seconds + sig_seconds + sets_seconds + prepare_seconds
    for method, budget_list in (("forest", budgets[:1]), ("rerank", budgets)):
        for budget in budget_list:
            step(f"{method} (candidates {budget}): {len(query_ids)} queries")
            searcher.candidates = budget
            examined: list[int] = []

            def run(q: int) -> np.ndarray:
                ids, count = searcher.search_ids(searcher.for_row(q), k, method)
                examined.append(count)
                return ids

            times, found = _time_queries(run, query_ids)
            name = f"{method} (candidates {budget})" if method == "rerank" else f"{method} (pool {searcher.pool})"
            methods.append(_method(name, build, forest_info["peak_rss_mb"], times, found, truth,
                                   float(np.mean(examined))))
    if use_faiss:
        methods += _faiss_methods(feats, query_ids, truth, k, step)
    return BenchReport(n=n, k=k, queries=len(query_ids), machine=machine(),
                       params={"top_k": top_k, "num_perm": num_perm, "trees": trees, "basis": basis, "seed": seed,
                               "budgets": list(budgets), "exact_timed_queries": len(timed)},
                       data_seconds=round(data_seconds, 3), signatures=signatures, forest=forest_info, methods=methods)


def _faiss_methods(feats: np.ndarray, query_ids: np.ndarray, truth: np.ndarray, k: int,
                   step: Callable[[str], None]) -> list[MethodResult]:
    try:
        import faiss  # optional extra: pip install 'stl10sim[faiss]'
    except ImportError:
        return []
    out = []
    kinds = [("faiss IndexFlatIP", lambda d: faiss.IndexFlatIP(d))]
    if len(feats) <= 200_000:  # HNSW construction at 1M x 1280 takes far longer than this bench's budget
        kinds.append(("faiss IndexHNSWFlat", lambda d: faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)))
    for name, make in kinds:
        step(f"{name}: build and queries")
        with peak_rss_growth() as rss:
            t0 = time.perf_counter()
            index = make(feats.shape[1])
            index.add(feats)
            build = time.perf_counter() - t0

        def run(q: int) -> np.ndarray:
            _, ids = index.search(feats[q : q + 1], k + 1)
            return ids[0][ids[0] != q][:k]

        timed = query_ids if "HNSW" in name else query_ids[:EXACT_TIMED_QUERIES]
        times, found = _time_queries(run, timed)
        # a flat index scans everything; HNSW's distance computations are not exposed: reported as 0
        out.append(_method(name, build, rss["mb"], times, found, truth[: len(timed)], len(feats) if "Flat" in name and "HNSW" not in name else 0))
    return out
