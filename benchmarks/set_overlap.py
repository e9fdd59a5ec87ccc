#!/usr/bin/env python3
"""How much an image's set shares with its nearest neighbours' sets, against random images' (what LSH can use).

    python benchmarks/set_overlap.py CACHE_DIR [--queries 300]

For 300 seeded queries over the features in CACHE_DIR, and over the bench's synthetic features of the same
size: cosine of the 1st and 10th nearest neighbours and of random images, and the Jaccard of top-K sets (each
basis and K) with the 10th nearest neighbour (median) and with random images (mean). A MinHash forest finds a
neighbour at prefix depth r with probability J^r per tree, and hands back random images with J_random^r: the
ratio of the two columns is what the index has to work with.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import collection_arrays  # benchmarks/ is on the path when run as a script

from stl10_similarity.index.signatures import set_statistics, to_set_basis
from stl10_similarity.synthetic import synthetic_features


def report(name: str, feats: np.ndarray, queries: int, sizes: tuple[int, ...], bases: tuple[str, ...]) -> None:
    n = len(feats)
    rng = np.random.default_rng(0)
    q = rng.choice(n, queries, replace=False)
    sims = feats[q] @ feats.T
    sims[np.arange(queries), q] = -9
    order = np.argsort(-sims, 1)[:, :10]
    others = rng.choice(n, 200)
    print(f"\n{name}, {n} images: cosine 1st NN {np.take_along_axis(sims, order[:, :1], 1).mean():.3f}, "
          f"10th NN {np.take_along_axis(sims, order[:, 9:], 1).mean():.3f}, random {sims[:, others].mean():.3f}")
    print("| basis | K | J with 10th NN (median) | J with random (mean) | ratio |")
    print("|---|---|---|---|---|")
    stats = set_statistics(feats)
    for basis in bases:
        x = to_set_basis(feats, basis, stats)
        for k in sizes:
            top = np.argpartition(-x, k - 1, axis=1)[:, :k]
            member = np.zeros((n, feats.shape[1]), np.float32)
            member[np.arange(n)[:, None], top] = 1
            inter = member[q] @ member.T
            jac = inter / (2 * k - inter)
            near = float(np.median(np.take_along_axis(jac, order[:, 9:], 1)))
            far = float(jac[:, others].mean())
            print(f"| {basis} | {k} | {near:.3f} | {far:.3f} | {near / far:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    real = np.ascontiguousarray(collection_arrays(args.cache_dir, "features")[0], dtype=np.float32)
    report("real", real, args.queries, (20, 100, 400), ("raw", "centered", "standardized"))
    report("synthetic", synthetic_features(len(real))[0], args.queries, (100,), ("centered",))


if __name__ == "__main__":
    main()
