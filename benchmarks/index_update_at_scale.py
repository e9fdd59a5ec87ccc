#!/usr/bin/env python3
"""What an index update costs against a full build, in memory, at a large N.

    python benchmarks/index_update_at_scale.py [--n 1000000] [--new 1000] [--changed 100] [--removed 100]

Synthetic features (`stl10sim bench`'s generator). The "before" index is built over the first N rows; the update
removes --removed rows, rewrites --changed rows (new features) and appends --new rows, as `stl10sim extract` does
for a folder. Times, side by side in one process: the full build (statistics, top-K sets, signatures, sorted tree
arrays) against the update (sets and signatures of the rewritten and new rows with the frozen statistics, and
the merge into the sorted trees, `forest.merge_prefix_arrays`); checks that both give identical trees.
Disk writes (the same for both) are left out.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from stl10_similarity.index.forest import merge_prefix_arrays, prefix_arrays
from stl10_similarity.index.signatures import SEED, minhash_signatures, permuted_token_table, set_statistics, top_k_sets
from stl10_similarity.params import IndexParams
from stl10_similarity.synthetic import synthetic_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=1000)
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--removed", type=int, default=100)
    args = parser.parse_args()
    p = IndexParams(sets="top-dims", trees=8)  # the top-dims index the docs' figures were measured with
    feats, _ = synthetic_features(args.n + args.new + args.changed, seed=3)
    old, extra = feats[: args.n], feats[args.n :]
    rng = np.random.default_rng(0)
    picked = rng.choice(args.n, args.changed + args.removed, replace=False)
    changed, removed = np.sort(picked[: args.changed]), np.sort(picked[args.changed :])
    stats = set_statistics(old)
    table = permuted_token_table(p.num_perm, SEED, old.shape[1])
    old_sets = top_k_sets(old, p.top_k, p.basis, stats)
    old_sigs = minhash_signatures(old_sets, table)
    old_keys, old_order = prefix_arrays(old_sigs, p.trees)

    # the updated collection in id order: kept old rows (changed ones rewritten), then the new rows
    keep = np.ones(args.n, bool)
    keep[removed] = False
    kept = np.flatnonzero(keep)
    new_feats = np.concatenate([old[kept], extra[: args.new]])
    at_changed = np.searchsorted(kept, changed)
    new_feats[at_changed] = extra[args.new :]
    fresh = np.sort(np.concatenate([at_changed, np.arange(len(kept), len(new_feats))]))

    t0 = time.perf_counter()
    full_stats = stats  # a full build recomputes them; the comparison uses the frozen ones for equal trees
    set_statistics(new_feats)
    sets = top_k_sets(new_feats, p.top_k, p.basis, full_stats)
    sigs = minhash_signatures(sets, table)
    full_keys, full_order = prefix_arrays(sigs, p.trees)
    full_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    row_map = np.full(args.n, -1, np.int64)
    row_map[kept] = np.arange(len(kept))
    row_map[changed] = -1
    up_sigs = np.empty_like(sigs)
    untouched = np.setdiff1d(np.arange(len(new_feats)), fresh)
    up_sigs[untouched] = old_sigs[kept[np.isin(kept, changed, invert=True)]]
    up_sigs[fresh] = minhash_signatures(top_k_sets(new_feats[fresh], p.top_k, p.basis, stats), table)
    up_keys, up_order = merge_prefix_arrays(old_keys, old_order, row_map, up_sigs, fresh, p.trees)
    update_seconds = time.perf_counter() - t0

    same = bool(np.array_equal(up_sigs, sigs) and np.array_equal(up_keys, full_keys)
                and np.array_equal(up_order, full_order))
    print(json.dumps({"n_before": args.n, "new": args.new, "changed": args.changed, "removed": args.removed,
                      "full_build_seconds": round(full_seconds, 2), "update_seconds": round(update_seconds, 2),
                      "ratio": round(full_seconds / update_seconds, 1), "identical_trees": same}, indent=2))


if __name__ == "__main__":
    main()
