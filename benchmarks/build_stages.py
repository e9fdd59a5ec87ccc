#!/usr/bin/env python3
"""Where an index build's time goes: each stage of `index_in_memory` timed on its own, in one process.

    python benchmarks/build_stages.py FEATURES.npy [--n N] [--out results.json]

FEATURES.npy is an (N, D) float32 array (e.g. the simulated million: `common.worlds` of the 50,000 real photos'
features, 20 copies). Each stage runs as `index_in_memory` runs it, with the default index parameters; the
report gives every stage's wall seconds, system seconds and minor page faults (a fresh large array faults its
pages in one by one: that is what the build's chunk sizes avoid). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import emit  # benchmarks/ is on the path when run as a script

from stl10_similarity.bench import machine
from stl10_similarity.index.forest import BandCodes, prefix_arrays
from stl10_similarity.index.projection import fit_projection
from stl10_similarity.index.sets import bitmaps, representation
from stl10_similarity.index.signatures import SEED, minhash_signatures, set_statistics, token_table, top_k_sets
from stl10_similarity.params import COMPILED_TOP_K_ROWS, IndexParams


def stages(feats: np.ndarray, params: IndexParams = IndexParams()) -> dict[str, dict[str, float]]:
    """Each stage's wall and system seconds and minor page faults, in build order."""
    out: dict[str, dict[str, float]] = {}

    def timed(name: str, run: Callable[[], Any]) -> Any:
        before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        result = run()
        wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        out[name] = {"seconds": round(wall, 2), "system_seconds": round(after.ru_stime - before.ru_stime, 2),
                     "page_faults": after.ru_minflt - before.ru_minflt}
        return result

    n, dim = feats.shape
    stats = timed("statistics", lambda: set_statistics(feats))
    topk = timed(f"top-{params.top_k} sets", lambda: top_k_sets(feats, params.top_k, params.basis, stats,
                                                                 compiled=len(feats) >= COMPILED_TOP_K_ROWS))
    timed("bitmaps", lambda: bitmaps(topk, dim))
    rep = representation(params, n, dim)
    vocabulary = timed("fitting the centroids", lambda: rep.fit(feats, stats, SEED))
    sets = timed("assigning the nearest centroids", lambda: rep.sets(feats, stats, vocabulary))
    table = token_table(params.num_perm, rep.universe(vocabulary))
    sigs = timed("MinHash signatures", lambda: minhash_signatures(sets, table))
    timed("trees", lambda: prefix_arrays(sigs, params.trees, BandCodes.for_table(table, params.trees)))
    projection = timed("projection: fit", lambda: fit_projection(feats, stats[0], SEED))
    timed("projection: encode", lambda: projection.encode(feats))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("--n", type=int, default=None, help="the first N rows only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    feats = np.load(args.features, mmap_mode="r")
    feats = np.ascontiguousarray(feats[: args.n] if args.n else feats, dtype=np.float32)
    report = stages(feats)
    emit({"n": len(feats), "machine": machine(), "stages": report,
          "total_seconds": round(sum(s["seconds"] for s in report.values()), 1)}, args.out)


if __name__ == "__main__":
    main()
