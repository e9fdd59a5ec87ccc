#!/usr/bin/env python3
"""Load test for `stl10sim serve`: K concurrent clients for T seconds against 127.0.0.1.

    python benchmarks/load_server.py CACHE_DIR [--clients 16] [--seconds 20] [--k 10] [--method auto]

CACHE_DIR holds built features (and an index, or the server builds one): for 13,000 real photos use the cache
of `stl10sim extract`; for 1,000,000 synthetic features build one with
`python benchmarks/index_at_scale.py --n 1000000 --cache-dir DIR`. Starts `stl10sim serve` as its own process,
waits until it answers, warms it up for --warmup seconds, reads its resident memory, then runs the clients
(threads with keep-alive connections,
in this process) asking `GET /api/v1/search?image_id=<random>&k=K`, and reads the server's memory again.
Reports p50/p99 latency over HTTP, requests/s, errors (anything but 200 and deliberate 503s), 503s, and the
server's RSS before and after. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from common import free_port, rss_mb, wait_ready

from stl10_similarity.bench import machine


def client(port: int, n: int, k: int, method: str, until: float, seed: int, out: list) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.monotonic() < until:
        path = f"/api/v1/search?image_id={rng.randrange(n)}&k={k}&method={method}"
        t0 = time.perf_counter()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            status = -1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        out.append((time.perf_counter() - t0, status))
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--method", default="auto")
    parser.add_argument("--max-concurrent", type=int, default=None)
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before memory is first read")
    args = parser.parse_args()
    port = free_port()
    cmd = [sys.executable, "-m", "stl10_similarity", "-q", "serve", "--port", str(port), "--cache-dir", str(args.cache_dir)]
    if args.max_concurrent:
        cmd += ["--max-concurrent", str(args.max_concurrent)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ})
    try:
        health = wait_ready(port, proc)
        startup = time.perf_counter() - t0
        fresh = rss_mb(proc.pid)

        def run_clients(seconds: float) -> tuple[list[list], float]:
            out: list[list] = [[] for _ in range(args.clients)]
            until = time.monotonic() + seconds
            threads = [threading.Thread(target=client, args=(port, health["n"], args.k, args.method, until, i, out[i]))
                       for i in range(args.clients)]
            began = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return out, time.perf_counter() - began

        run_clients(args.warmup)  # page in the memory maps, fill the thread pool
        before = rss_mb(proc.pid)
        results, wall = run_clients(args.seconds)
        after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    flat = [r for per in results for r in per]
    ok = np.array([lat for lat, status in flat if status == 200])
    statuses = [status for _, status in flat]
    print(json.dumps({
        "machine": machine(), "n": health["n"], "clients": args.clients, "seconds": round(wall, 1), "k": args.k,
        "method": args.method, "server_startup_seconds": round(startup, 1),
        "requests": len(flat), "ok": int(len(ok)), "deliberate_503": statuses.count(503),
        "errors": sum(1 for s in statuses if s not in (200, 503)),
        "requests_per_second": round(len(ok) / wall, 1),
        "p50_ms": round(float(np.percentile(ok, 50) * 1e3), 2) if len(ok) else None,
        "p99_ms": round(float(np.percentile(ok, 99) * 1e3), 2) if len(ok) else None,
        "server_rss_mb_fresh": round(fresh, 1), "server_rss_mb_before": round(before, 1), "server_rss_mb_after": round(after, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
