#!/usr/bin/env python3
"""Search quality at scale with real feature statistics, beside the bench's synthetic features at the same sizes.

    python benchmarks/real_at_scale.py CACHE_DIR [--copies 1,10,111] [--queries 300] [--out results.json]

CACHE_DIR holds real features from `stl10sim extract` (the shared dev photos). A collection W times larger is
built from them as in benchmarks/duplicates_planted.py: the real features plus W - 1 copies whose centred
dimensions are shuffled by a fixed permutation per copy, so every copy has the real neighbourhoods, set overlaps
and value distribution but looks like no other copy. At each size, the default index is built in memory and the
same seeded queries (from the real copy) run through rerank, forest and exact search; recall@10 is against exact
cosine over the whole collection. The bench's synthetic features (`stl10sim bench`) run at the same sizes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import collection_arrays, worlds  # noqa: E402  (benchmarks/ is on the path when run as a script)

from stl10_similarity.index import index_in_memory  # noqa: E402
from stl10_similarity.params import IndexParams, SearchParams  # noqa: E402
from stl10_similarity.search import Searcher  # noqa: E402
from stl10_similarity.synthetic import synthetic_features  # noqa: E402


def old_rerank(searcher: Searcher, v, k: int) -> tuple[np.ndarray, int]:
    """The default before: the pool's candidates with the best MinHash estimates, ordered by cosine."""
    pool = searcher.forest_candidates(v, max(searcher.pool, searcher.candidates, k))
    keep = searcher.top(pool, searcher.estimated_jaccard(v, pool), max(searcher.candidates, k))
    return searcher.top(keep, searcher.cosine(v, keep), k), len(pool)


def run(feats: np.ndarray, queries: np.ndarray, k: int = 10) -> dict:
    t0 = time.perf_counter()
    searcher = Searcher(index_in_memory(feats, np.full(len(feats), -1, np.int16), [], IndexParams()),
                        SearchParams.candidates)
    out: dict = {"n": len(feats), "index_seconds": round(time.perf_counter() - t0, 1)}
    truth = {}
    for method in ("exact", "rerank", "rerank by estimate (old default)", "forest"):
        times, recalls, examined = [], [], []
        for q in queries:
            v = searcher.for_row(int(q))
            t0 = time.perf_counter()
            if method.startswith("rerank by estimate"):
                ids, count = old_rerank(searcher, v, k)
            else:
                ids, count = searcher.search_ids(v, k, method)
            times.append(time.perf_counter() - t0)
            examined.append(count)
            if method == "exact":
                truth[int(q)] = float(feats[ids[-1]] @ feats[q])
            recalls.append(float((feats[ids] @ feats[q] >= truth[int(q)] - 1e-6).sum()) / k)
        out[method] = {"recall_at_10": round(float(np.mean(recalls)), 3),
                       "p50_ms": round(1e3 * float(np.median(times)), 2),
                       "examined_mean": round(float(np.mean(examined)), 0)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--copies", default="1,10,111")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    real = np.ascontiguousarray(collection_arrays(args.cache_dir, "features")[0], dtype=np.float32)
    queries = np.sort(np.random.default_rng(0).choice(len(real), args.queries, replace=False))
    rows = []
    for copies in [int(x) for x in args.copies.split(",")]:
        feats = worlds(real, copies) if copies > 1 else real
        row = {"copies": copies, "real": run(feats, queries)}
        del feats
        synthetic, _ = synthetic_features(len(real) * copies)
        row["synthetic"] = run(synthetic, queries)
        del synthetic
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"cache_dir": str(args.cache_dir), "queries": args.queries, "rows": rows},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
