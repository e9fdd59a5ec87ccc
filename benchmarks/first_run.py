#!/usr/bin/env python3
"""The README's first run, timed step by step as whole processes: get the data, extract, first and second query.

    python benchmarks/first_run.py DEV_DATA_DIR --weights PATH [--unlabeled 100000] [--work DIR]

STL-10 cannot be downloaded here, so this builds an archive of STL-10's real shape (5,000 train, 8,000 test and
--unlabeled unlabelled 96x96 images, by repeating the photos of DEV_DATA_DIR/stl10_binary, such as the dev
photos ../shared/data/build_dev_stl10.py writes) and serves it from a local HTTP server on 127.0.0.1, so the
download step measures our client, MD5 check and unpacking, not the internet. Then it times, each as a fresh
process with an empty cache: `stl10sim download --no-verify`, `stl10sim extract --weights PATH`,
`stl10sim query --image-id 42 --png grid.png` (builds the index first) and the same query again.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import SHAPE, build_collection  # benchmarks/ is on the path when run as a script

from stl10_similarity.bench import machine


def build_archive(source: Path, work: Path, unlabeled: int) -> Path:
    """STL-10's shape: 5,000 train + 8,000 test (extract_end_to_end's collection) and ``unlabeled`` more, as .tar.gz."""
    build_collection(source, work, 13_000)
    dst = work / "stl10_binary"
    pool = np.fromfile(source / "stl10_binary" / "unlabeled_X.bin", np.uint8).reshape(-1, *SHAPE)
    if not len(pool):
        pool = np.fromfile(dst / "train_X.bin", np.uint8).reshape(-1, *SHAPE)
    with open(dst / "unlabeled_X.bin", "wb") as out:
        for lo in range(0, unlabeled, 10_000):
            pool[np.arange(lo, min(lo + 10_000, unlabeled)) % len(pool)].tofile(out)
    archive = work / "serve" / "stl10_binary.tar.gz"
    archive.parent.mkdir()
    subprocess.run(["tar", "czf", str(archive), "-C", str(work), "stl10_binary"], check=True)
    shutil.rmtree(dst)
    return archive


def timed(cmd: list[str], env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return {"command": " ".join(["stl10sim", *cmd[3:]]), "wall_seconds": round(wall, 2),
            "stdout": proc.stdout.strip()[:300], "stderr_last": (proc.stderr.strip().splitlines() or [""])[-1][:300]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dev_data", type=Path)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--unlabeled", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stl10sim-first-run-", dir=args.work))
    t0 = time.perf_counter()
    archive = build_archive(args.dev_data, work, args.unlabeled)
    build_seconds = time.perf_counter() - t0
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "STL10SIM_CACHE_DIR": str(work / "cache"),
           "STL10SIM_URL": f"http://127.0.0.1:{server.server_port}/{archive.name}"}
    env.pop("STL10SIM_DATA_DIR", None)
    cli = [sys.executable, "-m", "stl10_similarity"]
    steps = [
        timed([*cli, "-q", "download", "--no-verify"], env),
        timed([*cli, "-q", "extract", "--weights", args.weights], env),
        timed([*cli, "query", "--image-id", "42", "--png", str(work / "grid.png")], env),
        timed([*cli, "query", "--image-id", "42", "--png", str(work / "grid.png")], env),
        timed([*cli, "query", "--image-id", "42", "--json"], env),
    ]
    server.shutdown()
    print(json.dumps({"machine": machine(), "archive_mb": round(archive.stat().st_size / 2**20, 1),
                      "archive_build_seconds": round(build_seconds, 1), "steps": steps}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
