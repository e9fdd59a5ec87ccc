#!/usr/bin/env python3
"""The attacks of the serving issue, measured against `stl10sim serve` run as its own process on 127.0.0.1.

    python benchmarks/attack_server.py CACHE_DIR [--collection NAME] [--out benchmarks/results/attack-server.json]

1. Held bodies: C connections each send the headers of a 10 MB upload and 9.5 MB of its body, then stall.
   Reports the server's resident memory before and at its peak, and how many were refused (503) at once.
2. Queued uploads: U uploads in flight (real PNGs; the model embeds one at a time) while four clients send P
   probes (health and id searches) one after another: how many probes got 503.
3. Copy against map: the server's start-up time and resident memory with `--artifacts copy` (the default) and
   `--artifacts map`, and an exact search's answer after every artifact is truncated in place under it.

Prints one JSON document (and writes it with --out).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from common import emit, free_port, rss_mb, wait_ready

from stl10_similarity.bench import machine


def start(cache: Path, collection: str, *options: str) -> tuple[subprocess.Popen, int, float]:
    port = free_port()
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "stl10_similarity", "-q", "serve", "--port", str(port),
                             "--collection", collection, "--cache-dir", str(cache), *options])
    wait_ready(port, proc)
    return proc, port, time.perf_counter() - began


def held_bodies(port: int, pid: int, connections: int) -> dict:
    """``connections`` uploads of 10 MB each stalling after 9.5 MB."""
    before = rss_mb(pid)
    peak, refused, stop = [before], [0], threading.Event()
    socks: list[socket.socket] = []
    lock = threading.Lock()

    def sample() -> None:
        while not stop.is_set():
            peak.append(rss_mb(pid))
            time.sleep(0.05)

    def one() -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        except OSError:
            return
        with lock:
            socks.append(sock)
        try:
            sock.sendall(f"POST /api/v1/search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 10000000\r\n"
                         "Content-Type: multipart/form-data; boundary=x\r\n\r\n".encode())
            chunk = b"0" * 65536
            for _ in range(9_500_000 // len(chunk)):
                sock.sendall(chunk)
        except OSError:
            pass
        try:
            sock.settimeout(0.5)
            if b" 503 " in sock.recv(64):
                with lock:
                    refused[0] += 1
        except OSError:
            pass

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=one) for _ in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    time.sleep(1)
    stop.set()
    sampler.join()
    for sock in socks:
        sock.close()
    return {"connections": connections, "rss_mb_before": round(before, 1), "rss_mb_peak": round(max(peak), 1),
            "refused_503": refused[0]}


def queued_uploads(port: int, uploads: int, probes: int, image: bytes) -> dict:
    statuses: list[int] = []
    probe_statuses: list[int] = []

    def upload() -> None:
        boundary = "stl10simbench"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("POST", "/api/v1/search", body=body,
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            statuses.append(conn.getresponse().status)
        except OSError:
            statuses.append(-1)

    def probe(i: int) -> None:  # one client of four, asking one after another while the uploads are in flight
        for j in range(i, probes, 4):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            path = "/api/v1/health" if j % 2 else f"/api/v1/search?image_id={j}&k=5"
            try:
                conn.request("GET", path)
                probe_statuses.append(conn.getresponse().status)
            except OSError:
                probe_statuses.append(-1)
            conn.close()

    senders = [threading.Thread(target=upload) for _ in range(uploads)]
    for s in senders:
        s.start()
    time.sleep(0.3)
    probers = [threading.Thread(target=probe, args=(i,)) for i in range(4)]
    for p in probers:
        p.start()
    for t in senders + probers:
        t.join()
    return {"uploads": uploads, "upload_statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "probes": probes, "probe_statuses": {str(s): probe_statuses.count(s) for s in sorted(set(probe_statuses))}}


def copy_against_map(cache: Path, collection: str) -> dict:
    out = {}
    for mode in ("copy", "map"):
        proc, port, seconds = start(cache, collection, "--artifacts", mode)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/api/v1/search?image_id=3&k=5&method=exact")
            conn.getresponse().read()
            out[mode] = {"startup_seconds": round(seconds, 2), "rss_mb": round(rss_mb(proc.pid), 1)}
        finally:
            proc.terminate()
            proc.wait(30)
    return out


def truncated_under_copy(cache: Path, collection: str) -> dict:
    """Truncate every artifact in place under a default server (on a scratch copy of the collection)."""
    import shutil

    scratch = cache.parent / f".attack-{os.getpid()}"
    home = cache / "collections" / collection if collection != "stl10" else cache
    target = scratch / "collections" / "scratch"
    shutil.copytree(home / "features", target / "features")
    shutil.copytree(home / "index", target / "index")
    proc, port, _ = start(scratch, "scratch")
    try:
        def ask() -> tuple[int, list]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/api/v1/search?image_id=3&k=5&method=exact")
            response = conn.getresponse()
            return response.status, json.loads(response.read())["results"]

        before = ask()
        for path in list((target / "features").glob("*.npy")) + list((target / "index").glob("*.npy")):
            os.truncate(path, 0)
        after = ask()
        return {"alive": proc.poll() is None, "same_answer": before == after, "status_after": after[0]}
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--collection", default="stl10")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--probes", type=int, default=76)
    parser.add_argument("--parts", default="bodies,uploads,copy,truncate",
                        help="which measurements (the first two run on code without --artifacts too)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8)).save(buffer, "PNG")
    doc: dict = {"machine": machine(), "collection": args.collection}
    parts = args.parts.split(",")
    proc, port, _ = start(args.cache_dir, args.collection)
    try:
        if "bodies" in parts:
            doc["held_bodies"] = held_bodies(port, proc.pid, args.connections)
        if "uploads" in parts:
            doc["queued_uploads"] = queued_uploads(port, args.uploads, args.probes, buffer.getvalue())
    finally:
        proc.terminate()
        proc.wait(30)
    if "copy" in parts:
        doc["copy_against_map"] = copy_against_map(args.cache_dir, args.collection)
    if "truncate" in parts:
        doc["truncated_in_place_under_copy"] = truncated_under_copy(args.cache_dir, args.collection)
    emit(doc, args.out)


if __name__ == "__main__":
    main()
