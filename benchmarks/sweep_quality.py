#!/usr/bin/env python3
"""Sweep how sets are formed and how the forest is searched, against exact cosine search.

    python benchmarks/sweep_quality.py CACHE_DIR [--queries 1000]

CACHE_DIR holds features from `stl10sim extract` (the README uses the shared real photos, test split,
real ImageNet weights). Each row builds an index in memory and runs `stl10sim evaluate`'s metrics for the
rerank method and exact search on the same seeded queries. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import collection_arrays  # benchmarks/ is on the path when run as a script

from stl10_similarity import evaluate as ev
from stl10_similarity.index import index_in_memory
from stl10_similarity.params import EvaluateParams, IndexParams
from stl10_similarity.session import Session
from stl10_similarity.store import features_manifest

GRID = (
    # (basis, top_k, num_perm, trees, candidates): one knob at a time around the defaults
    [(basis, 100, 128, 8, 400) for basis in ("raw", "centered", "standardized")]
    + [("centered", top_k, 128, 8, 400) for top_k in (20, 50, 200)]
    + [("centered", 100, 128, trees, 400) for trees in (4, 16)]
    + [("centered", 100, num_perm, 8, 400) for num_perm in (64, 256)]
    + [("centered", 100, 128, 8, c) for c in (50, 100, 200, 800)]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    feats, labels = collection_arrays(args.cache_dir, "features", "labels")
    names = features_manifest(args.cache_dir)["class_names"]
    ids = ev.choose_queries(len(feats), args.queries)
    print(f"{len(ids)} queries over {len(feats)} images, k=10\n")
    print("| basis | top-k | num_perm | trees | candidates | rerank P@10 | exact P@10 | rerank R@10 vs cosine "
          "| forest R@10 vs Jaccard | rerank p50 ms | exact p50 ms | examined |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for basis, top_k, num_perm, trees, candidates in GRID:
        params = IndexParams(sets="top-dims", top_k=top_k, num_perm=num_perm, trees=trees, basis=basis)
        index = index_in_memory(feats, labels, names, params)
        params = EvaluateParams(k=10, candidates=candidates, methods=("forest", "rerank", "exact"))
        forest, rerank, exact = ev.evaluate(Session(index, {}), params, query_ids=ids).methods
        print(f"| {basis} | {top_k} | {num_perm} | {trees} | {candidates} | {rerank.precision_at_k:.3f} | "
              f"{exact.precision_at_k:.3f} | {rerank.recall_vs_cosine:.3f} | {forest.recall_vs_jaccard:.3f} | "
              f"{rerank.p50_ms:.2f} | {exact.p50_ms:.2f} | {rerank.mean_candidates:.0f} |", flush=True)


if __name__ == "__main__":
    main()
