#!/usr/bin/env python3
"""Explore a weighted set representation against today's top-K sets, on real features (issue 14's levers).

    python benchmarks/explore_weighted.py CACHE_DIR [--queries 500] [--scales 30,60,120]

Each image's set becomes the tokens (d, 1..level_d) with level_d = floor(scale * x_d) of its raw (L2-normalised,
non-negative) feature: the Jaccard of two such sets is the generalized Jaccard sum(min)/sum(max) of the levels.
A per-dimension prefix-minimum table turns the signature into a column-wise minimum over the image's active
dimensions, as for top-K sets. For each representation this prints: exact-similarity top-10 overlap with cosine,
and recall@10 vs exact cosine of rerank at several candidate budgets through the same forest search.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import collection_arrays  # benchmarks/ is on the path when run as a script

from stl10_similarity.index import LoadedIndex
from stl10_similarity.index.forest import prefix_arrays
from stl10_similarity.index.sets import bitmaps
from stl10_similarity.index.signatures import _fmix32, set_statistics
from stl10_similarity.search import Searcher


def level_table(num_perm: int, max_level: int, dim: int = 1280, seed: int = 1) -> np.ndarray:
    """P[d, j] = min over i <= j of the permuted hashes of token (d, i): (dim, max_level + 1, num_perm) uint32."""
    from datasketch import MinHash
    from datasketch.hashfunc import sha1_hash32

    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    a, b = a.astype(np.uint32), b.astype(np.uint32)
    table = np.full((dim, max_level + 1, num_perm), np.iinfo(np.uint32).max, np.uint32)
    for d in range(dim):
        hv = _fmix32(np.array([sha1_hash32(f"{d}:{j}".encode()) for j in range(1, max_level + 1)], np.uint32))
        with np.errstate(over="ignore"):
            permuted = (hv[:, None] * a[None, :] + b[None, :]).astype(np.uint32)
        table[d, 1:] = np.minimum.accumulate(permuted, axis=0)
    return table


def levels_of(x: np.ndarray, scale: float, max_level: int) -> np.ndarray:
    return np.minimum(np.floor(x * scale), max_level).astype(np.uint8)


def weighted_signatures(levels: np.ndarray, table: np.ndarray) -> np.ndarray:
    n, dim = levels.shape
    out = np.full((n, table.shape[2]), np.iinfo(np.uint32).max, np.uint32)
    for lo in range(0, n, 512):
        block = levels[lo : lo + 512]
        acc = out[lo : lo + 512]
        for d in range(dim):
            rows = table[d, block[:, d]]  # level 0 rows are all-max: no effect
            np.minimum(acc, rows, out=acc)
    return out


def exact_top(scores: np.ndarray, q: int, k: int) -> np.ndarray:
    scores = scores.copy()
    scores[q] = -np.inf
    return np.argsort(-scores, kind="stable")[:k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--scales", default="30,60,120")
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--trees", type=int, default=8)
    parser.add_argument("--budgets", default="50,100,200,400")
    args = parser.parse_args()
    feats, labels = collection_arrays(args.cache_dir, "features", "labels")
    n = len(feats)
    rng = np.random.default_rng(0)
    queries = np.sort(rng.choice(n, size=min(args.queries, n), replace=False))
    cos = feats[queries] @ feats.T
    truth = [set(exact_top(cos[r], q, 10).tolist()) for r, q in enumerate(queries)]
    kth = np.array([np.sort(np.delete(cos[r], q))[-10] for r, q in enumerate(queries)])
    budgets = [int(b) for b in args.budgets.split(",")]
    rows = []

    def evaluate(name: str, index: LoadedIndex, similarity) -> None:
        sim_overlap = np.mean([len(set(exact_top(similarity(q), q, 10).tolist()) & truth[r]) / 10
                               for r, q in enumerate(queries)])
        for budget in budgets:
            searcher = Searcher(index, budget)
            recalls, times, precisions, examined = [], [], [], []
            for r, q in enumerate(queries):
                v = searcher.for_row(int(q))
                t0 = time.perf_counter()
                ids, count = searcher.search_ids(v, 10, "rerank")
                examined.append(count)
                times.append(time.perf_counter() - t0)
                recalls.append(np.count_nonzero(feats[ids] @ feats[q] >= kth[r] - 1e-5) / 10)
                precisions.append(float(np.mean(labels[ids] == labels[q])))
            rows.append({"representation": name, "budget": budget, "exact_sim_top10_overlap": round(float(sim_overlap), 3),
                         "recall@10": round(float(np.mean(recalls)), 3), "P@10": round(float(np.mean(precisions)), 3),
                         "p50_ms": round(float(np.median(times)) * 1e3, 2),
                         "pool_examined": round(float(np.mean(examined)))})
            print(json.dumps(rows[-1]), flush=True)

    exact_p = float(np.mean([np.mean(labels[exact_top(cos[r], q, 10)] == labels[q]) for r, q in enumerate(queries)]))
    print(json.dumps({"n": n, "queries": len(queries), "exact_P@10": round(exact_p, 3)}), flush=True)

    # today's: centred top-100 sets
    stats = set_statistics(feats)
    from stl10_similarity.index import index_in_memory
    from stl10_similarity.params import IndexParams

    base = index_in_memory(feats, labels, [], IndexParams(sets="top-dims", num_perm=args.num_perm, trees=args.trees))
    sets = base.topk
    dense = np.zeros((n, feats.shape[1]), np.float32)
    np.put_along_axis(dense, sets.astype(np.intp), 1.0, axis=1)

    def set_jaccard(q: int) -> np.ndarray:
        inter = dense @ dense[q]
        return inter / (2 * sets.shape[1] - inter)

    evaluate("top-100 centred", base, set_jaccard)

    for scale in (float(s) for s in args.scales.split(",")):
        max_level = int(np.ceil(scale * feats.max()))
        t0 = time.perf_counter()
        table = level_table(args.num_perm, max_level)
        levels = levels_of(feats, scale, max_level)
        sigs = weighted_signatures(levels, table)
        build = time.perf_counter() - t0
        lv = levels.astype(np.float32)

        def gen_jaccard(q: int, lv=lv) -> np.ndarray:
            return np.minimum(lv, lv[q]).sum(1) / np.maximum(np.maximum(lv, lv[q]).sum(1), 1)

        keys, order = prefix_arrays(sigs, args.trees)
        index = LoadedIndex(params={}, features_params={}, class_names=[], features=feats, labels=labels,
                            topk=sets, topk_bits=bitmaps(sets, feats.shape[1]), sets=sets,
                            vocabulary=np.zeros((0, feats.shape[1]), np.float32), signatures=sigs, stats=stats,
                            token_table=np.zeros((1, 1), np.uint32),
                            tree_keys=keys, tree_order=order)
        print(json.dumps({"scale": scale, "max_level": max_level, "mean_tokens": round(float(levels.sum(1).mean()), 1),
                          "mean_active_dims": round(float((levels > 0).sum(1).mean()), 1),
                          "build_seconds": round(build, 1)}), flush=True)
        evaluate(f"levels x{scale:g}", index, gen_jaccard)


if __name__ == "__main__":
    main()
