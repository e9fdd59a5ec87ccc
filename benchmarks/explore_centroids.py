#!/usr/bin/env python3
"""How the centroid sets' knobs trade pool size for recall: centroids C, set size K, trees, forest budget.

    python benchmarks/explore_centroids.py FEATURES.npy [--n 50000] [--configs 500:8:32,1000:12:32]
                                           [--budgets 1000,2000,4000] [--queries 600]

FEATURES.npy: real features (e.g. the 50,000 CIFAR-10 photos embedded by `stl10sim extract --images`). For each
config C:K:trees an index is built in memory over a seeded random subset of --n rows; for each forest budget the
same seeded queries gather their pool (`Searcher.forest_candidates`), and the whole pool is scored by cosine: the
recall@10 printed is the most any re-ranking of that pool can reach, beside the pool's size and the gathering's
p50 (thread CPU time).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from stl10_similarity.index import index_in_memory
from stl10_similarity.params import IndexParams
from stl10_similarity.search import Searcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--configs", default="500:8:32,1000:8:32,1000:12:32,1000:8:64")
    parser.add_argument("--budgets", default="1000,2000,4000")
    parser.add_argument("--queries", type=int, default=600)
    args = parser.parse_args()
    feats = np.load(args.features, mmap_mode="r")
    n = min(args.n, len(feats))
    rows = np.sort(np.random.default_rng(0).choice(len(feats), n, replace=False))
    x = np.ascontiguousarray(feats[rows], dtype=np.float32)
    queries = np.random.default_rng(7).choice(n, min(args.queries, n), replace=False)
    scores = x[queries] @ x.T
    scores[np.arange(len(queries)), queries] = -np.inf
    kth = np.sort(scores, axis=1)[:, -10]
    for config in args.configs.split(","):
        count, size, trees = (int(v) for v in config.split(":"))
        t0 = time.perf_counter()
        params = IndexParams(centroids=count, set_size=size, trees=trees)
        searcher = Searcher(index_in_memory(x, np.zeros(n, np.int16), [], params))
        build = time.perf_counter() - t0
        for budget in [int(b) for b in args.budgets.split(",")]:
            recall, cpu, pool = [], [], []
            for i, q in enumerate(queries):
                v = searcher.for_row(int(q))
                t0 = time.thread_time()
                found = searcher.forest_candidates(v, budget)
                cpu.append(time.thread_time() - t0)
                top = found[np.argsort(-(x[found] @ x[q]))[:10]]
                recall.append(float((x[top] @ x[q] >= kth[i] - 1e-6).sum()) / 10)
                pool.append(len(found))
            print(json.dumps({"n": n, "centroids": count, "set_size": size, "trees": trees, "budget": budget,
                              "build_seconds": round(build, 1), "pool_recall_at_10": round(float(np.mean(recall)), 3),
                              "forest_p50_ms": round(1e3 * float(np.median(cpu)), 2),
                              "mean_pool": round(float(np.mean(pool)))}), flush=True)


if __name__ == "__main__":
    main()
