#!/usr/bin/env python3
"""Where a full scan stops paying: exact search against rerank by collection size, with rerank's recall.

    python benchmarks/scan_limit.py [--features F.npy] [--sizes 12500,25000,50000] [--offset 0] [--queries 500]
                                    [--out F.json]

With --features (e.g. the 50,000 CIFAR-10 photos embedded by `stl10sim extract --images`), each size is a nested
random subset of those real features (rows ``offset .. offset + size`` of one fixed shuffle, so ``--sizes 25000
--offset 25000`` is the other half: a second split with no photo in common); without, synthetic features. At each
size: the default index in memory (build seconds), the same seeded queries for both methods in one process,
exact and rerank interleaved twice (the second pass is kept), rerank's recall@10 against exact cosine and its
mean pool.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from stl10_similarity.index import index_in_memory
from stl10_similarity.params import IndexParams
from stl10_similarity.search import Searcher
from stl10_similarity.synthetic import synthetic_features


def measure(feats: np.ndarray, queries: int) -> dict:
    n = len(feats)
    t0 = time.perf_counter()
    searcher = Searcher(index_in_memory(feats, np.full(n, -1, np.int16), [], IndexParams()))
    row = {"n": n, "index_seconds": round(time.perf_counter() - t0, 1), "pool": searcher.pool,
           "centroids": searcher.index.universe}
    picks = np.random.default_rng(0).choice(n, min(queries, n), replace=False)
    found: dict[str, list[np.ndarray]] = {}
    examined = []
    for method in ("exact", "rerank", "exact", "rerank"):
        times, found[method] = [], []
        for q in picks:
            v = searcher.for_row(int(q))
            t0 = time.perf_counter()
            ids, count = searcher.search_ids(v, 10, method)
            times.append(time.perf_counter() - t0)
            found[method].append(ids)
            if method == "rerank":
                examined.append(count)
        row[f"{method}_p50_ms"] = round(1e3 * float(np.median(times)), 3)
    # recall against exact, ties at the 10th score counted as hits
    hits = []
    for q, exact, got in zip(picks, found["exact"], found["rerank"]):
        kth = float(feats[exact[-1]] @ feats[q])
        hits.append(float(np.count_nonzero(feats[got] @ feats[q] >= kth - 1e-5)) / 10)
    row["rerank_recall_at_10"] = round(float(np.mean(hits)), 4)
    row["rerank_mean_examined"] = round(float(np.mean(examined)), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default=None, help="an (N, D) .npy of unit float32 features (real photos)")
    parser.add_argument("--sizes", default="12500,25000,50000")
    parser.add_argument("--offset", type=int, default=0, help="where in the shuffled features the subsets start")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--out", default=None, help="write the rows as JSON here too")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    real = None if args.features is None else np.load(args.features, mmap_mode="r")
    order = None if real is None else np.random.default_rng(1).permutation(len(real))  # nested subsets
    rows = []
    for n in sizes:
        if real is None:
            feats = synthetic_features(n)[0]
        else:
            feats = np.ascontiguousarray(real[np.sort(order[args.offset : args.offset + n])], dtype=np.float32)
        rows.append(measure(feats, args.queries))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"features": args.features or "synthetic", "offset": args.offset, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
