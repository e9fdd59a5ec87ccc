#!/usr/bin/env python3
"""The ray engine against in-process, side by side in one run: extraction, near-duplicates, sharded search.

    python benchmarks/ray_engine.py PHOTO_FOLDER --weights PATH [--actors 2] [--shards 4] [--queries 200]
        [--threshold 0.95] [--out results.json]

On PHOTO_FOLDER (say the 10,000 dev photos' train/) in a fresh temporary cache:
1. extraction as a new folder collection in this process (`LocalRunner`) and on a local Ray (`RayRunner`, one
   actor per CPU unless --actors), each timed in wall and CPU seconds (Ray: the driver's plus every actor's,
   model loading included; Ray's own start-up is timed apart); the two collections' keys, ids and features are
   compared (Ray's actors run torch on one thread each, this process on all cores: bits may differ, so the
   largest difference and the smallest cosine between the two are reported);
2. near-duplicates at --threshold on that collection, in-process and as Ray tasks (wall and CPU: the driver's
   plus the tasks'), the groups compared, and both against exact all-pairs search (in blocks);
3. search: the index unsharded, then as --shards shards searched here and by one Ray actor per shard, over
   --queries image ids for rerank, forest and exact: answers compared with the unsharded ones, median latency.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import collection_arrays, emit, exact_pairs  # benchmarks/ is on the path when run as a script


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(work):
    wall, cpu = time.perf_counter(), cpu_now()
    out = work()
    return out, round(time.perf_counter() - wall, 2), round(cpu_now() - cpu, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", type=Path)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--actors", type=int, default=None)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from functools import partial

    import ray

    from stl10_similarity.duplicates import find_duplicates
    from stl10_similarity.duplicates.pairs import candidate_pairs, distinct_pairs, duplicate_trees, tree_pairs
    from stl10_similarity.duplicates.ray_pairs import linked_pairs as linked_pairs_on_ray
    from stl10_similarity.index import build_index, last_params
    from stl10_similarity.ingest.ray_runner import RayRunner
    from stl10_similarity.ingest.runners import LocalRunner
    from stl10_similarity.ingest.update import update_folder
    from stl10_similarity.params import DuplicatesParams, EngineParams, ExtractParams, IndexParams
    from stl10_similarity.session import Session

    work = Path(tempfile.mkdtemp(prefix="stl10sim-ray-"))
    params = ExtractParams(weights=args.weights, image_size=args.image_size)
    doc: dict = {"photos": str(args.photos), "machine": {"cpus": __import__("os").cpu_count()},
                    "ray": ray.__version__}

    local, wall, cpu = timed(lambda: update_folder(args.photos, work / "local", params, runner=LocalRunner()))
    doc["extract_local"] = {"images": local.n, "wall_s": wall, "cpu_s": cpu, "model_s": local.model_seconds}
    print(json.dumps(doc["extract_local"]), file=sys.stderr)

    _, wall, _ = timed(lambda: ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR"))
    doc["ray_start_s"] = wall
    runner = RayRunner(actors=args.actors)
    remote, wall, cpu = timed(lambda: update_folder(args.photos, work / "ray", params, runner=runner))
    actors_cpu = round(sum(runner.cpu_seconds.values()), 2)
    doc["extract_ray"] = {"images": remote.n, "wall_s": wall, "driver_cpu_s": cpu, "actors_cpu_s": actors_cpu,
                             "cpu_s": round(cpu + actors_cpu, 2), "actors": len(runner.pids),
                             "actor_peak_rss_mb": round(runner.peak_mb, 1),
                             "batch_size": remote.manifest["params"]["batch_size"],
                             "chunk": params.chunk_size}
    print(json.dumps(doc["extract_ray"]), file=sys.stderr)
    a, keys_a, ids_a = collection_arrays(work / "local", "features", "keys", "ids")
    b, keys_b, ids_b = collection_arrays(work / "ray", "features", "keys", "ids")
    doc["extract_equal"] = {"keys_and_ids": bool(np.array_equal(keys_a, keys_b) and np.array_equal(ids_a, ids_b)),
        "bit_identical_rows": int((a == b).all(axis=1).sum()), "rows": len(a),
        "max_abs_diff": float(np.abs(a - b).max()), "min_cosine": float((a * b).sum(axis=1).min())}

    home = work / "ray"
    build_index(home, IndexParams())
    session = Session.open(home)
    dup = DuplicatesParams(kinds=("near",), near_cosine=args.threshold)  # near by cosine: the candidate search
    groups_local, wall, cpu = timed(lambda: find_duplicates(session.index, dup))
    doc["duplicates_local"] = {"wall_s": wall, "cpu_s": cpu, "groups": len(groups_local)}
    costs: list[float] = []
    trees = duplicate_trees(session.index)
    finder = partial(tree_pairs, floor=dup.floor, neighbours=dup.neighbours)
    (pairs_ray, wall, cpu) = timed(lambda: linked_pairs_on_ray(session.index.features, trees, finder, distinct_pairs,
                                                               costs=costs))
    groups_ray, wall2, cpu2 = timed(lambda: find_duplicates(session.index, dup, engine=EngineParams(engine="ray")))
    doc["duplicates_ray"] = {"wall_s": wall2, "driver_cpu_s": cpu2, "tasks_cpu_s": round(sum(costs), 2),
                                "cpu_s": round(cpu2 + sum(costs), 2), "groups": len(groups_ray),
                                "pairs_only_wall_s": wall}
    exact = exact_pairs(np.asarray(session.index.features), dup.near_cosine)
    local_pairs = distinct_pairs([finder(session.index.features, trees[0][t], trees[1][t])
                                  for t in range(trees[1].shape[0])])[0]
    near = candidate_pairs(session.index, dup.floor, dup.neighbours)
    found = {tuple(p) for p in near[0][near[1] >= dup.near_cosine].tolist()}
    doc["duplicates_equal"] = {"same_groups": groups_local == groups_ray,
                                  "same_pairs": bool(np.array_equal(local_pairs, pairs_ray[0])),
                                  "exact_pairs": len(exact), "found_pairs": len(found & exact),
                                  "recall_of_exact_pairs": round(len(found & exact) / len(exact), 4) if exact else None}
    print(json.dumps(doc["duplicates_equal"]), file=sys.stderr)

    rng = np.random.default_rng(0)
    rows = rng.choice(session.n, size=min(args.queries, session.n), replace=False)
    ids = [session.index.id_of(int(r)) for r in rows]

    def run(sess, method):
        searcher, out, times = sess.searcher(), [], []
        for i in ids:
            q = searcher.for_row(sess.check_id(i))
            t = time.perf_counter()
            out.append(searcher.search(q, 10, method)[0].tolist())
            times.append((time.perf_counter() - t) * 1e3)
        return out, round(statistics.median(times), 3)

    methods = ("rerank", "forest", "exact")
    unsharded = {m: run(session, m) for m in methods}
    build_index(home, last_params(home), shards=args.shards)
    sharded = Session.open(home)
    on_ray = Session.open(home, engine=EngineParams(engine="ray"))
    doc["search"] = {"shards": args.shards, "queries": len(ids), "k": 10}
    for m in methods:
        here, there = run(sharded, m), run(on_ray, m)
        doc["search"][m] = {"unsharded_p50_ms": unsharded[m][1], "sharded_p50_ms": here[1],
                               "ray_actors_p50_ms": there[1], "sharded_equal": here[0] == unsharded[m][0],
                               "ray_equal": there[0] == unsharded[m][0]}
    on_ray.parts.close()
    emit(doc, args.out)


if __name__ == "__main__":
    main()
