"""``stl10sim bench``: index and query speed, memory and recall at scale, on synthetic features or yours.

Every figure is measured in one process, side by side, on the same vectors and queries, so ratios
hold even on a shared, noisy machine. The report says which machine it ran on.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity.index import LoadedIndex, describe_params, index_in_memory
from stl10_similarity.index.forest import build_forest
from stl10_similarity.index.signatures import datasketch_signature, minhash_signatures
from stl10_similarity.params import BenchParams, IndexParams, SearchParams
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.search import Searcher
from stl10_similarity.store.artifacts import write_json
from stl10_similarity.synthetic import synthetic_features

EXACT_TIMED_QUERIES = 20  # brute force at 1M takes ~0.5 s a query: time a few, report batched qps too
# the datasketch forest object (millions of Python objects, ~10 GB at a million images and 32 trees) is timed on
# at most this many signatures; queries never build it (only --method forest-query loads forest.pkl)
FOREST_OBJECT_N = 100_000
HNSW_M = 32  # FAISS HNSW's links per node in the comparison rows ...
HNSW_EF_SEARCH = (16, 64, 128, 256)  # ... and its search depths: from faster than us to more recall than us
# HNSW is built in every run up to this many images; beyond, only with a cache (a million takes ~5 minutes to
# build on 2 cores: built once, then loaded)
HNSW_UNCACHED_N = 300_000


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
    from stl10_similarity.store.artifacts import library_versions

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
    bytes_per_image: float  # index memory beyond the features
    # every query in one call, on every core (Searcher.search_many; FAISS's own batched search): queries/s
    batched_qps: float | None = None


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
            candidates: float, bytes_per_image: float) -> MethodResult:
    return MethodResult(name=name, build_seconds=round(build, 3), peak_rss_mb=rss,
                        bytes_per_image=round(bytes_per_image, 1),
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

PREVIOUS_INDEX = IndexParams(sets="top-dims", trees=8)  # the index before learned sets: kept as a bench row
PREVIOUS_CANDIDATES = 800  # its default pool was 4,000 (400 candidates x 10): the same pool as today's 800 x 5


def index_bytes(index: LoadedIndex) -> int:
    """What the index holds in memory beyond the features (forest.pkl stays on disk)."""
    arrays = (index.topk, index.topk_bits, index.sets, index.vocabulary, index.signatures, index.stats, index.token_table,
              index.tree_keys, index.tree_order, index.projection, index.projected)
    distinct = {id(a): a for a in arrays}  # top-dims indexes hold one array as both topk and sets
    return int(sum(np.asarray(a).nbytes for a in distinct.values()))


def bench_features(path: Any) -> np.ndarray:
    """A user's features for ``bench --features``: a 2-D float32/float16 .npy, memory-mapped, checked, then
    normalised to unit rows in memory (float32), as extraction stores them (``imported``'s checks)."""
    from stl10_similarity.sources.imported import normalised_chunks, open_features

    raw = open_features(path, dim=None, min_rows=16)
    feats = np.empty(raw.shape, dtype=np.float32)
    lo = 0
    for block in normalised_chunks(raw, path):
        feats[lo : lo + len(block)] = block
        lo += len(block)
    return feats


def run_bench(
    bench: BenchParams = BenchParams(), index_params: IndexParams = IndexParams(), *,
    features: np.ndarray | None = None, use_faiss: bool = True, hnsw_cache: Path | None = None,
    progress: Progress = SILENT,
) -> BenchReport:
    """Build every method on ``features`` (default: ``bench.size`` synthetic vectors) and measure it side by
    side: exact, the index with ``index_params`` (rerank at each budget, forest), the previous default index
    (top-100 dims, 8 trees) and, when faiss is installed, HNSW and IVF-Flat. HNSW is built up to
    ``HNSW_UNCACHED_N`` images, or at any size with ``hnsw_cache``: a folder its graphs are kept in, built once per
    set of features and loaded by later runs."""
    k, queries, seed, baseline_n = bench.k, bench.queries, bench.seed, bench.baseline_n
    budgets = tuple(sorted(bench.budgets))
    step = lambda what: progress.note(f"bench: {what} ...")  # noqa: E731
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    if features is None:
        step(f"generating {bench.size:,} synthetic features")
        feats, clusters = synthetic_features(bench.size, seed)
        labels = clusters.astype(np.int16)
    else:
        feats, labels = features, np.full(len(features), -1, dtype=np.int16)
    data_seconds = time.perf_counter() - t0
    n = len(feats)
    if k >= n:
        from stl10_similarity.errors import ParameterError

        raise ParameterError("k", f"({k}) must be smaller than the number of features ({n})")
    query_ids = np.sort(rng.choice(n, size=min(queries, n), replace=False))

    step(f"the index ({describe_params(index_params)})")
    with peak_rss_growth() as rss:
        t0 = time.perf_counter()
        index = index_in_memory(feats, labels, [], index_params)
        build = time.perf_counter() - t0
    index_rss = rss["mb"]
    sigs = np.asarray(index.signatures)
    recorded = dict(index.params)

    step("signatures: bulk and datasketch's per-image update loop (baseline), on the index's sets")
    baseline_n = min(baseline_n, n)
    t0 = time.perf_counter()
    bulk_same = minhash_signatures(index.sets[:baseline_n], index.token_table)
    bulk_same_seconds = time.perf_counter() - t0
    universe = index.universe
    t0 = time.perf_counter()
    baseline = [datasketch_signature(row[row != universe], index_params.num_perm) for row in index.sets[:baseline_n]]
    baseline_seconds = time.perf_counter() - t0
    identical = bool(np.array_equal(np.stack(baseline[:1000]), bulk_same[:1000]))
    del baseline, bulk_same
    signatures = {
        "index_build_seconds": round(build, 3), "baseline_seconds": round(baseline_seconds, 3),
        "baseline_n": baseline_n, "bulk_seconds_on_baseline_sets": round(bulk_same_seconds, 3),
        "speedup": round(baseline_seconds / max(bulk_same_seconds, 1e-9), 1), "identical_to_datasketch": identical,
    }

    forest_n = min(n, FOREST_OBJECT_N)
    step(f"datasketch forest of {forest_n:,} signatures: build, pickle, load")
    with peak_rss_growth() as rss:
        t0 = time.perf_counter()
        forest = build_forest(sigs[:forest_n], index_params.trees)
        forest_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "forest.pkl")
        t0 = time.perf_counter()
        with open(path, "wb") as handle:
            pickle.dump(forest, handle, protocol=pickle.HIGHEST_PROTOCOL)
        dump_seconds = time.perf_counter() - t0
        size_mb = os.path.getsize(path) / 2**20
        t0 = time.perf_counter()
        with open(path, "rb") as reader:
            forest = pickle.load(reader)
        load_seconds = time.perf_counter() - t0
    del forest
    forest_info = {"n": forest_n, "build_seconds": round(forest_seconds, 3), "peak_rss_mb": rss["mb"],
                   "pickle_mb": round(size_mb, 1), "pickle_seconds": round(dump_seconds, 3),
                   "load_seconds": round(load_seconds, 3)}

    step(f"exact cosine ground truth for {len(query_ids)} queries (batched)")
    with peak_rss_growth() as rss:
        t0 = time.perf_counter()
        truth = exact_knn(feats, query_ids, k)
        truth_seconds = time.perf_counter() - t0
    searcher = Searcher(index, budgets[0])
    step("loading the compiled rerank (numba's cache, or a compile)")
    t0 = time.perf_counter()
    compiled_used = searcher.prepare()  # what a process answering many queries does first
    compiled_info = {"compiled": compiled_used, "compiled_load_seconds": round(time.perf_counter() - t0, 3)}
    methods = []
    timed = query_ids[:EXACT_TIMED_QUERIES]

    def exact_ids(q: int, s: Searcher = searcher) -> np.ndarray:  # bound now: `searcher` is deleted below
        return s.search_ids(s.for_row(q), k, "exact")[0]

    times, found = _time_queries(exact_ids, timed)
    exact = _method("exact (numpy)", 0.0, rss["mb"], times, found, truth[: len(timed)], n, 0)
    exact.qps = round(len(query_ids) / truth_seconds, 1)  # batched throughput
    methods.append(exact)

    per_image = index_bytes(index) / n
    for method, budget in [("forest", budgets[0])] + [("rerank", b) for b in budgets]:
        methods.append(_run_method(method, budget, searcher, query_ids, truth, k, build, index_rss, per_image, step))
    if compiled_used:  # the same answers by the numpy path, which one-off queries take
        default = SearchParams.candidates
        methods.append(_run_method("rerank", default, Searcher(index, default, compiled=False), query_ids, truth, k,
                                   build, index_rss, per_image, step, name=f"rerank (candidates {default}, numpy path)"))
    del searcher, index  # free the index before the previous one is built
    step("the previous default index (top-100 dims, 8 trees)")
    with peak_rss_growth() as rss:
        t0 = time.perf_counter()
        previous = index_in_memory(feats, labels, [], PREVIOUS_INDEX)
        previous_build = time.perf_counter() - t0
    methods.append(_run_method("rerank", PREVIOUS_CANDIDATES, Searcher(previous, PREVIOUS_CANDIDATES), query_ids,
                               truth, k, previous_build, rss["mb"], index_bytes(previous) / n, step,
                               name=f"previous index: top-dims, 8 trees (cand. {PREVIOUS_CANDIDATES})"))
    del previous
    if use_faiss:
        methods += _faiss_methods(feats, query_ids, truth, k, step, hnsw_cache)
    return BenchReport(n=n, k=k, queries=len(query_ids), machine=machine(),
                       params={**recorded, "minhash_seed": recorded["seed"], "seed": seed, "budgets": list(budgets),
                               "exact_timed_queries": len(timed), **compiled_info,
                               "features": "synthetic" if features is None else "given"},
                       data_seconds=round(data_seconds, 3), signatures=signatures, forest=forest_info, methods=methods)


def _run_method(method: str, budget: int, searcher: Searcher, query_ids: np.ndarray, truth: np.ndarray, k: int,
                build: float, rss: float, per_image: float, step: Callable[[str], None],
                name: str | None = None) -> MethodResult:
    searcher.candidates = budget
    name = name or (f"rerank (candidates {budget})" if method == "rerank" else f"forest (pool {searcher.pool})")
    step(f"{name}: {len(query_ids)} queries")
    examined: list[int] = []

    def run(q: int) -> np.ndarray:
        ids, count = searcher.search_ids(searcher.for_row(q), k, method)
        examined.append(count)
        return ids

    times, found = _time_queries(run, query_ids)
    result = _method(name, build, rss, times, found, truth, float(np.mean(examined)), per_image)
    if method == "rerank":
        vectors = [searcher.for_row(int(q)) for q in query_ids]
        t0 = time.perf_counter()
        batch = searcher.search_many(vectors, k, method)
        result.batched_qps = round(len(vectors) / (time.perf_counter() - t0), 1)
        if not all(np.array_equal(rows, alone) for (rows, _, _), alone in zip(batch, found)):
            raise RuntimeError("a batch of queries answered otherwise than the same queries one by one")
    return result


def _setter(attribute: str, value: int) -> Callable[[Any], None]:
    """A function setting a search parameter (``hnsw.efSearch``, ``nprobe``) on a FAISS index."""
    def apply(index: Any) -> None:
        owner, _, name = attribute.rpartition(".")
        setattr(getattr(index, owner) if owner else index, name, value)

    return apply


def _hnsw_file(cache: Path, feats: np.ndarray) -> Path:
    """Where the HNSW graph of these features is kept: named by their shape and a hash of every 256th row."""
    import hashlib

    fingerprint = hashlib.sha256(np.ascontiguousarray(feats[::256]).tobytes()).hexdigest()[:16]
    return Path(cache) / f"hnsw-M{HNSW_M}-{feats.shape[0]}x{feats.shape[1]}-{fingerprint}.faiss"


def _cached_hnsw(cache: Path, feats: np.ndarray, make: Callable[[], Any],
                 step: Callable[[str], None]) -> tuple[Any, float, float]:
    """The HNSW index of ``feats`` from ``cache`` (with the seconds its build took when it was made), or built now
    and kept there; and the peak memory growth of this call in MB."""
    import faiss

    path = _hnsw_file(cache, feats)
    with peak_rss_growth() as rss:
        if path.is_file() and path.with_suffix(".json").is_file():
            step(f"HNSW: loading the graph built before from {path}")
            index = faiss.read_index(str(path))
            build = float(json.loads(path.with_suffix(".json").read_text())["build_seconds"])
        else:
            step(f"HNSW: building it ({len(feats):,} images; kept in {cache} for later runs)")
            t0 = time.perf_counter()
            index = make()
            index.add(feats)
            build = time.perf_counter() - t0
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            faiss.write_index(index, str(partial))
            os.replace(partial, path)
            write_json(path.with_suffix(".json"), {"build_seconds": round(build, 3), "n": len(feats),
                                                   "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return index, build, rss["mb"]


def _faiss_methods(feats: np.ndarray, query_ids: np.ndarray, truth: np.ndarray, k: int,
                   step: Callable[[str], None], hnsw_cache: Path | None = None) -> list[MethodResult]:
    try:
        import faiss  # optional extra: pip install 'stl10sim[faiss]'
    except ImportError:
        return []
    n, dim = feats.shape
    out = []
    # 4 sqrt(N) lists, at most 1,024 (training more takes minutes on 2 cores); faiss wants >= 39 points per list
    nlist = int(max(1, min(4 * np.sqrt(n), 1024, n // 39)))
    kinds: list[tuple[str, Callable[[], Any], Callable[[Any], None]]] = [
        ("faiss IndexFlatIP", lambda: faiss.IndexFlatIP(dim), lambda index: None)]
    if n <= HNSW_UNCACHED_N or hnsw_cache is not None:
        for ef in HNSW_EF_SEARCH:
            kinds.append((f"faiss HNSW M={HNSW_M} efSearch {ef}",
                          lambda: faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT),
                          _setter("hnsw.efSearch", ef)))
    for probe in sorted({min(16, nlist), min(64, nlist)}):
        kinds.append((f"faiss IVF-Flat nlist {nlist} nprobe {probe}",
                      lambda: faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT),
                      _setter("nprobe", probe)))
    families: dict[str, list[tuple[str, Callable[[], Any], Callable[[Any], None]]]] = {}
    for kind in kinds:
        families.setdefault(kind[0].split(" efSearch")[0].split(" nprobe")[0], []).append(kind)
    for family, members in families.items():  # one family in memory at a time: each holds a copy of the vectors
        step(f"{family}: build")
        make = members[0][1]
        if family.startswith("faiss HNSW") and hnsw_cache is not None:
            index, build, grown = _cached_hnsw(hnsw_cache, feats, make, step)
            rss = {"mb": grown}
        else:
            with peak_rss_growth() as rss:
                t0 = time.perf_counter()
                index = make()
                if not index.is_trained:
                    index.train(feats[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)])
                index.add(feats)
                build = time.perf_counter() - t0
        flat = family == "faiss IndexFlatIP"
        for name, _, tune in members:
            tune(index)

            def run(q: int, index: Any = index) -> np.ndarray:
                _, ids = index.search(feats[q : q + 1], k + 1)
                return ids[0][ids[0] != q][:k]

            step(f"{name}: queries")
            timed = query_ids[:EXACT_TIMED_QUERIES] if flat else query_ids
            times, found = _time_queries(run, timed)
            # a flat index scans everything; HNSW's and IVF's distance computations are not exposed: reported as 0
            result = _method(name, build, rss["mb"], times, found, truth[: len(timed)], n if flat else 0,
                             _faiss_bytes(index, n))
            if not flat:  # FAISS's own batch: every query in one search call, on its OpenMP threads
                t0 = time.perf_counter()
                index.search(feats[query_ids], k + 1)
                result.batched_qps = round(len(query_ids) / (time.perf_counter() - t0), 1)
            out.append(result)
        del index
    return out


def _faiss_bytes(index: Any, n: int) -> float:
    """Bytes per image a faiss index holds beyond the vectors themselves."""
    import faiss

    if isinstance(index, faiss.IndexFlat):
        return 0.0
    if isinstance(index, faiss.IndexIVF):  # an 8-byte id per vector, plus the coarse centroids
        return 8.0 + index.nlist * index.d * 4 / n
    return max(0.0, (len(faiss.serialize_index(index)) - n * index.d * 4) / n)  # HNSW: its links
