#!/usr/bin/env python3
"""Disjoint random subsets of a feature array, for measuring quality and speed on a second split.

    python benchmarks/split_features.py FEATURES.npy --sizes 25000,25000 [--seed 7] --out-dir DIR

Shuffles the rows by --seed and cuts the shuffled order into consecutive pieces of --sizes (no row in two
pieces), each written as DIR/split-<i>.npy with its rows in their original order; then
`stl10sim bench --features DIR/split-<i>.npy` measures each one. Prints one JSON document (what was written).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import emit  # benchmarks/ is on the path when run as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("--sizes", required=True, help="comma-separated row counts, summing to at most N")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()

    feats = np.load(args.features, mmap_mode="r")
    sizes = [int(size) for size in args.sizes.split(",")]
    if min(sizes) < 1 or sum(sizes) > len(feats):
        parser.error(f"--sizes must be positive and sum to at most {len(feats):,} (the rows in {args.features})")
    order = np.random.default_rng(args.seed).permutation(len(feats))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written, start = [], 0
    for i, size in enumerate(sizes):
        rows = np.sort(order[start:start + size])
        start += size
        path = args.out_dir / f"split-{i}.npy"
        np.save(path, np.ascontiguousarray(feats[rows]))
        written.append({"path": str(path), "rows": size, "first_rows": rows[:5].tolist()})
    emit({"features": str(args.features), "seed": args.seed, "splits": written}, None)


if __name__ == "__main__":
    main()
