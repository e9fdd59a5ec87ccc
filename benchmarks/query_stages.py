#!/usr/bin/env python3
"""Where a rerank query's time goes, stage by stage, in one process.

    python benchmarks/query_stages.py FEATURES.npy [--queries 1000] [--out stages.json]

Builds the default index over FEATURES in memory and times, for seeded queries (after 100 warm-up ones), each
stage of the numpy rerank path as `search/methods.py` runs it: the query vector, the forest's pool (prefix ranges
and the union of tree ranges), the projection's (or shared dimensions') scores of the pool, choosing the best,
the exact cosine of those, and the final ranking; then the whole `Searcher.search` for the same queries, on the
numpy path and on the compiled one (`search/compiled.py`; one call, not split into stages). Medians in ms.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from stl10_similarity.index import index_in_memory
from stl10_similarity.params import IndexParams, SearchParams
from stl10_similarity.search import Searcher
from stl10_similarity.search.methods import _most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    feats = np.asarray(np.load(args.features, mmap_mode="r"), dtype=np.float32)
    index = index_in_memory(feats, np.full(len(feats), -1, np.int16), [], IndexParams())
    searcher = Searcher(index, SearchParams.candidates, compiled=False)  # the stages are the numpy path's
    fast = Searcher(index, SearchParams.candidates, compiled=True)
    rows = np.random.default_rng(args.seed).choice(len(feats), min(args.queries + 100, len(feats)), replace=False)
    stages: dict[str, list[float]] = {}
    whole, whole_compiled = [], []
    projection = searcher.projection_keep is not None
    for number, row in enumerate(rows.tolist()):
        marks = [time.perf_counter()]
        q = searcher.for_row(row)
        marks.append(time.perf_counter())
        pool = searcher.forest_candidates(q, searcher.pool)
        marks.append(time.perf_counter())
        scores = searcher.scores("projected" if projection else "shared", q, pool)
        marks.append(time.perf_counter())
        count = searcher.reranked(10)
        keep = _most(pool, scores, count)
        marks.append(time.perf_counter())
        cosines = searcher.cosine(q, keep)
        marks.append(time.perf_counter())
        searcher.ranked(keep, cosines, 10)
        marks.append(time.perf_counter())
        started = time.perf_counter()
        searcher.search(searcher.for_row(row), 10, "rerank")
        middle = time.perf_counter()
        fast.search(fast.for_row(row), 10, "rerank")
        if number >= 100:  # the first ones warm caches and allocators up
            whole.append(middle - started)
            whole_compiled.append(time.perf_counter() - middle)
            names = ("query vector", "pool", "prefilter scores", "choose best", "exact cosine", "rank")
            for name, lo, hi in zip(names, marks, marks[1:]):
                stages.setdefault(name, []).append(hi - lo)
    doc = {"n": len(feats), "queries": len(whole), "prefilter": "projection" if projection else "top-k overlap",
           "pool_budget": searcher.pool, "reranked": searcher.reranked(10),
           "median_ms": {name: round(float(np.median(v)) * 1e3, 3) for name, v in stages.items()},
           "search_p50_ms": round(float(np.median(whole)) * 1e3, 3),
           "compiled_search_p50_ms": round(float(np.median(whole_compiled)) * 1e3, 3) if fast.uses_compiled else None}
    print(json.dumps(doc, indent=1))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
