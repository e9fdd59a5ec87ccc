#!/usr/bin/env python3
"""Where a full scan stops being cheap: p50 of exact search against rerank's, by collection size.

    python benchmarks/scan_limit.py [--sizes 13000,25000,50000,100000] [--queries 200]

Synthetic features (`stl10sim bench`'s generator: the same 1280 float32 values per image as real ones, so the
scan reads the same bytes), the default index in memory, the same seeded queries for both methods, in one process.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="13000,25000,50000,100000")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        feats, labels = synthetic_features(n)
        searcher = Searcher(index_in_memory(feats, labels.astype(np.int16), [], IndexParams()))
        queries = np.random.default_rng(0).choice(n, args.queries, replace=False)
        row = {"n": n}
        for method in ("exact", "rerank", "exact", "rerank"):  # twice, interleaved: the second pass is kept
            times = []
            for q in queries:
                v = searcher.for_row(int(q))
                t0 = time.perf_counter()
                searcher.search_ids(v, 10, method)
                times.append(time.perf_counter() - t0)
            row[f"{method}_p50_ms"] = round(1e3 * float(np.median(times)), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
