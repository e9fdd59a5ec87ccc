#!/usr/bin/env python3
"""The real `stl10sim index` and `stl10sim query` processes at scale, on synthetic features.

    python benchmarks/index_at_scale.py --n 1000000 [--cache-dir DIR]

Writes N synthetic MobileNetV2-like features (stl10_similarity.synthetic) as a features artifact with
its manifest, exactly as `stl10sim extract` would, then runs `stl10sim index` as a child process and
reports its wall time and peak RSS (getrusage), the artifact sizes, and the wall time of whole
`stl10sim query --image-id 42 --json` processes (median of --query-runs, default 5). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stl10_similarity.bench import machine
from stl10_similarity.params import DIM
from stl10_similarity.store.artifacts import describe_file, library_versions, write_manifest
from stl10_similarity.synthetic import synthetic_chunks


def write_features(cache: Path, n: int) -> None:
    folder = cache / "features"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    feats = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float32, shape=(n, DIM))
    labels = np.empty(n, np.int16)
    lo = 0
    for x, y in synthetic_chunks(n):
        feats[lo : lo + len(x)] = x
        labels[lo : lo + len(x)] = y % 10
        lo += len(x)
    feats.flush()
    del feats
    np.save(folder / "labels.npy", labels)
    np.save(folder / "ids.npy", np.arange(n, dtype=np.int64))
    params = {"model": "synthetic", "split": "synthetic", "limit": None, "weights": "synthetic", "image_size": 0,
              "precision": "fp32", "dim": DIM, "normalised": "l2"}
    artifacts = {f: describe_file(folder / f"{f}.npy") for f in ("features", "labels", "ids")}
    write_manifest(folder, stage="extract", params=params, artifacts=artifacts,
                   inputs={"source": {"kind": "synthetic", "n": n}}, n=n, started=started, versions=library_versions(),
                   extra={"class_names": [f"cluster%10={i}" for i in range(10)]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--query-runs", type=int, default=5)
    args = parser.parse_args()
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="stl10sim-scale-"))
    cli = [sys.executable, "-m", "stl10_similarity"]
    t0 = time.perf_counter()
    write_features(cache, args.n)
    data_seconds = time.perf_counter() - t0

    # the child reports its own peak RSS (VmHWM of its address space): getrusage's ru_maxrss would also count
    # the moment after fork, when the child still shared this (large) process's pages, since it survives exec
    peak_file = cache / "index-peak-rss-kb"
    hwm = "[l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]"
    child = ("import atexit\n"
             f"atexit.register(lambda: open({str(peak_file)!r}, 'w').write({hwm}))\n"
             "from stl10_similarity.cli import main\n"
             f"main(['-q', 'index', '--force', '--cache-dir', {str(cache)!r}], prog_name='stl10sim')\n")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", child], check=True, stdout=subprocess.DEVNULL)
    index_seconds = time.perf_counter() - t0
    peak_mb = int(peak_file.read_text()) / 1024

    walls = []
    for _ in range(args.query_runs):
        t0 = time.perf_counter()
        out = subprocess.run([*cli, "query", "--image-id", "42", "--json", "--cache-dir", str(cache)],
                             check=True, capture_output=True, text=True).stdout
        walls.append(time.perf_counter() - t0)
    doc = json.loads(out)
    sizes = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted((cache / "index").iterdir()) if p.is_file()}
    print(json.dumps({
        "n": args.n, "machine": machine(), "synthetic_data_seconds": round(data_seconds, 1),
        "index_wall_seconds": round(index_seconds, 1), "index_peak_rss_mb": round(peak_mb, 1),
        "index_artifact_mb": sizes,
        "query_process_wall_seconds": {"median": round(statistics.median(walls), 3), "runs": [round(w, 3) for w in walls]},
        "query_timing_ms": doc["timing_ms"],
    }, indent=2))
    if args.cache_dir is None:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
