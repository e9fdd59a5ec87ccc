#!/usr/bin/env python3
"""Which candidates rerank re-ranks: the pool's best MinHash estimates, its best exact set Jaccard, or all of it.

    python benchmarks/explore_ranking.py CACHE_DIR [CACHE_DIR ...] [--queries 500]

For each CACHE_DIR (features from `stl10sim extract`), builds the default index in memory and, on the same
seeded queries, gathers the forest pool of POOL_FACTOR x candidates exactly as `rerank` does, then keeps
`candidates` of it by (a) estimated Jaccard from the signatures (today), (b) exact Jaccard of the stored top-K
sets, or (c) keeps the whole pool, and ranks what was kept by cosine. Prints recall@10 against exact cosine,
precision@10 and the median in-process search time of each, beside exact search.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import collection_arrays  # benchmarks/ is on the path when run as a script

from stl10_similarity import evaluate as ev
from stl10_similarity.index import index_in_memory
from stl10_similarity.index.sets import set_intersections
from stl10_similarity.params import POOL_FACTOR, IndexParams
from stl10_similarity.search import Searcher
from stl10_similarity.store import features_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caches", type=Path, nargs="+")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--budgets", default="100,200,400")
    parser.add_argument("--pool-factors", default=str(POOL_FACTOR))
    parser.add_argument("--trees", default="8")
    parser.add_argument("--ways", default="estimate,jaccard,pool")
    args = parser.parse_args()
    k = 10
    for cache in args.caches:
        feats, labels = collection_arrays(cache, "features", "labels")
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        names = features_manifest(cache)["class_names"]
        queries = ev.choose_queries(len(feats), args.queries)
        sims = feats[queries] @ feats.T
        sims[np.arange(len(queries)), queries] = -np.inf
        truth = np.argsort(-sims, axis=1)[:, :k]
        kth = np.take_along_axis(sims, truth[:, -1:], axis=1)[:, 0]
        print(f"\n{cache}: {len(feats)} images, {len(queries)} queries, k={k}")
        print("| trees | pool factor | candidates | kept by | recall@10 | P@10 | exact P@10 | pool | p50 ms "
              "| exact p50 ms |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        exact_p = np.mean([(labels[t] == labels[q]).mean() for q, t in zip(queries, truth)])
        top_dims = IndexParams(sets="top-dims", trees=8)  # the sets this exploration is about
        exact_ms = _exact_ms(Searcher(index_in_memory(feats, labels, names, top_dims)), queries[:100], k)
        for trees in [int(x) for x in args.trees.split(",")]:
            index = index_in_memory(feats, labels, names, IndexParams(sets="top-dims", trees=trees))
            searcher = Searcher(index)
            for factor in [int(x) for x in args.pool_factors.split(",")]:
                for budget in [int(x) for x in args.budgets.split(",")]:
                    for how in args.ways.split(","):
                        recall, precision, pool, p50 = _row(searcher, feats, labels, queries, kth, k, factor * budget,
                                                            budget, how)
                        print(f"| {trees} | {factor} | {budget} | {how} | {recall:.3f} | {precision:.3f} | "
                              f"{exact_p:.3f} | {pool:.0f} | {p50:.2f} | {exact_ms:.2f} |", flush=True)


def _exact_ms(searcher: Searcher, queries: np.ndarray, k: int) -> float:
    times = []
    for q in queries:
        v = searcher.for_row(int(q))
        t0 = time.perf_counter()
        searcher.search_ids(v, k, "exact")
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def _row(searcher: Searcher, feats: np.ndarray, labels: np.ndarray, queries: np.ndarray, kth: np.ndarray, k: int,
         pool_size: int, budget: int, how: str) -> tuple[float, float, float, float]:
    """Recall@k, precision@k, mean pool and p50 ms of one way of keeping ``budget`` of the forest's pool."""
    recalls, precisions, pools, times = [], [], [], []
    for r, q in enumerate(queries):
        v = searcher.for_row(int(q))
        t0 = time.perf_counter()
        ids = searcher.forest_candidates(v, pool_size)
        if how == "estimate":
            kept = searcher.top(ids, searcher.estimated_jaccard(v, ids), budget)
        elif how == "jaccard":
            shared = set_intersections(v.topk, searcher.index.topk[ids], 1280)
            kept = searcher.top(ids, shared.astype(np.float64), budget)
        else:
            kept = ids
        got = searcher.top(kept, searcher.cosine(v, kept), k)
        times.append(time.perf_counter() - t0)
        recalls.append(float((feats[got] @ feats[q] >= kth[r] - 1e-6).sum()) / k)
        precisions.append(float((labels[got] == labels[q]).mean()))
        pools.append(len(ids))
    return float(np.mean(recalls)), float(np.mean(precisions)), float(np.mean(pools)), 1e3 * float(np.median(times))

if __name__ == "__main__":
    main()
