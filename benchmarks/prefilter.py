#!/usr/bin/env python3
"""Which of rerank's pool gets an exact cosine: the projection's best share against shared top-K dimensions.

    python benchmarks/prefilter.py FEATURES.npy [--spec 50000x1 --spec 20000x2 ...] [--queries 300] [--out F.json]

Each ``--spec BASExW`` takes the first BASE rows of FEATURES (real features from `stl10sim extract`) and, for W > 1,
W - 1 copies whose centred dimensions are shuffled (``common.worlds``): the same neighbourhoods, but principal
directions diluted over W copies, so the projection's share of the variance falls. The default index is built in
memory; for seeded queries, the forest's pool is gathered once, then each rule keeps some of it for the exact
cosine: the projection's best 1/40, 1/20, 1/10 of the pool, or the 800 sharing most top-K dimensions (the rule
before). recall@10 is against exact cosine over the whole collection; *pool* is the most any rule can reach.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import worlds

from stl10_similarity.index import index_in_memory
from stl10_similarity.params import IndexParams, SearchParams
from stl10_similarity.search import Searcher


def best(rows: np.ndarray, scores: np.ndarray, keep: int) -> np.ndarray:
    return rows if len(rows) <= keep else rows[np.argpartition(-scores, keep - 1)[:keep]]


def measure(feats: np.ndarray, queries: int, seed: int, k: int = 10) -> dict:
    index = index_in_memory(feats, np.full(len(feats), -1, np.int16), [], IndexParams())
    searcher = Searcher(index, SearchParams.candidates)
    rows = np.random.default_rng(seed).choice(len(feats), queries, replace=False)
    hits: dict[str, list[float]] = {}
    for row in rows.tolist():
        exact = feats @ feats[row]
        exact[row] = -np.inf
        truth = set(np.argpartition(-exact, k)[:k].tolist())
        q = searcher.for_row(row)
        pool = searcher.forest_candidates(q, searcher.pool)
        kept = {"pool": pool}
        projected = searcher.scores("projected", q, pool)
        for share in (40, 20, 10):
            kept[f"projection 1/{share}"] = best(pool, projected, int(np.ceil(searcher.pool / share)))
        kept["top-k overlap 800"] = best(pool, searcher.scores("shared", q, pool), SearchParams.candidates)
        for rule, chosen in kept.items():
            top = chosen[np.argsort(-(feats[chosen] @ feats[row]))[:k]]
            hits.setdefault(rule, []).append(len(truth & set(top.tolist())) / k)
    return {"n": len(feats), "share": round(searcher.parts.shards[0].projection_share(), 4),
            "projection_keep": searcher.projection_keep,
            "recall_at_10": {rule: round(float(np.mean(v)), 4) for rule, v in hits.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("--spec", action="append", help="BASExW (default: 50000x1 20000x2 20000x3 10000x5)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    real = np.asarray(np.load(args.features, mmap_mode="r"), dtype=np.float32)
    runs = []
    for spec in args.spec or ["50000x1", "20000x2", "20000x3", "10000x5"]:
        base, copies = (int(part) for part in spec.split("x"))
        feats = worlds(real[:base], copies) if copies > 1 else real[:base]
        started = time.perf_counter()
        run = {"spec": spec, **measure(feats, args.queries, args.seed), "seconds": round(time.perf_counter() - started, 1)}
        print(json.dumps(run), flush=True)
        runs.append(run)
    if args.out:
        args.out.write_text(json.dumps({"features": str(args.features), "queries": args.queries, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
