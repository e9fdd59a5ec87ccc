#!/usr/bin/env python3
"""Whole `stl10sim extract` processes on STL-10's 13,000 labelled images, side by side.

    python benchmarks/extract_end_to_end.py DATA_DIR --weights PATH [--precision fp32 --precision auto]
        [--checkout OTHER_REPO_DIR] [--images 13000]

STL-10 itself cannot be downloaded everywhere, so this builds a collection of STL-10's size (5,000 train +
8,000 test) by repeating the photos of DATA_DIR (any folder with stl10_binary/ in STL-10's layout, such as
../shared/data's dev photos), then times one fresh `extract` process per precision: model load and file reading
included. --checkout adds a run of another checkout of this repository (say, an older commit in a git worktree),
at its default precision, so a change is measured against the code before it in the same run.
Prints one JSON document: wall seconds, images/s and peak RSS (the child's ru_maxrss) per run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import build_collection  # benchmarks/ is on the path when run as a script

from stl10_similarity.bench import machine
from stl10_similarity.store import features_manifest


def timed_extract(checkout: Path, data: Path, cache: Path, weights: str, precision: str | None) -> dict:
    args = [sys.executable, "-m", "stl10_similarity", "-q", "extract", "--data-dir", str(data),
            "--cache-dir", str(cache), "--weights", weights]
    if precision:
        args += ["--precision", precision]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    child = subprocess.Popen(args, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"extract failed in {checkout}: {child.stderr.read().decode().strip()}")
    manifest = features_manifest(cache)
    return {"checkout": str(checkout), "precision": manifest["params"]["precision"],
            "batch_size": manifest["params"]["batch_size"], "images": manifest["n"],
            "wall_seconds": round(seconds, 1), "images_per_second": round(manifest["n"] / seconds, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--precision", action="append", default=None, help="repeatable; default: fp32 and auto")
    parser.add_argument("--checkout", type=Path, action="append", default=[])
    parser.add_argument("--images", type=int, default=13000)
    opts = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        build_collection(opts.data_dir, data, opts.images)
        plan = [(c.resolve(), None) for c in opts.checkout] + [(here, p) for p in opts.precision or ["fp32", "auto"]]
        runs = []
        for i, (checkout, precision) in enumerate(plan):
            runs.append(timed_extract(checkout, data, Path(tmp) / f"cache{i}", opts.weights, precision))
            runs[-1]["asked"] = precision or "checkout default"
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"machine": machine(), "images": opts.images, "image_size": 224, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
