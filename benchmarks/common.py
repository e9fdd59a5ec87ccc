"""Helpers the benchmark scripts share (each script runs with benchmarks/ on its path, so ``from common import``).

Scripts read collections through the library's public API only: `collection_arrays` (verified against the
manifest), `Session`, `build_index`, the CLI.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np

SHAPE = (3, 96, 96)  # an STL-10 image in its binary files


def collection_arrays(home: Path, *names: str) -> list[np.ndarray]:
    """A collection's features-stage arrays, verified against its manifest (``store.features_arrays``)."""
    from stl10_similarity.store import features_arrays

    return [np.asarray(a) for a in features_arrays(Path(home), *names)]


def build_collection(source: Path, target: Path, images: int) -> None:
    """An STL-10 data dir of ``images`` labelled images: train = the first 5/13, test = the rest, cycling
    through the source's labelled photos."""
    src, dst = source / "stl10_binary", target / "stl10_binary"
    dst.mkdir(parents=True)
    x = np.concatenate([np.fromfile(src / f"{s}_X.bin", np.uint8).reshape(-1, *SHAPE) for s in ("train", "test")])
    y = np.concatenate([np.fromfile(src / f"{s}_y.bin", np.uint8) for s in ("train", "test")])
    n_train = images * 5 // 13
    for split, count, offset in (("train", n_train, 0), ("test", images - n_train, n_train)):
        pick = (np.arange(count) + offset) % len(x)
        x[pick].tofile(dst / f"{split}_X.bin")
        y[pick].tofile(dst / f"{split}_y.bin")
    for name in ("class_names.txt", "fold_indices.txt"):
        shutil.copy(src / name, dst / name)
    (dst / "unlabeled_X.bin").write_bytes(b"")


def tiled(source: Path, target: Path, images: int) -> None:
    """An STL-10 data dir whose unlabelled split is ``images`` images, tiled from every image of ``source``."""
    src, dst = source / "stl10_binary", target / "stl10_binary"
    dst.mkdir(parents=True)
    pool = np.concatenate([np.fromfile(src / f"{p}_X.bin", np.uint8).reshape(-1, *SHAPE)
                           for p in ("train", "test", "unlabeled") if (src / f"{p}_X.bin").is_file()])
    with open(dst / "unlabeled_X.bin", "wb") as out:
        for lo in range(0, images, 10_000):
            pool[np.arange(lo, min(lo + 10_000, images)) % len(pool)].tofile(out)
    for name in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"):
        shutil.copy(src / name, dst / name)


def exact_pairs(feats: np.ndarray, threshold: float, block: int = 2048) -> set[tuple[int, int]]:
    """Every row pair ``(i, j)``, ``i < j``, whose cosine reaches ``threshold``: all pairs, in blocks."""
    pairs: set[tuple[int, int]] = set()
    for lo in range(0, len(feats), block):
        scores = feats[lo : lo + block] @ feats.T
        rows, cols = np.nonzero(scores >= threshold)
        keep = cols > rows + lo
        pairs.update(zip((rows[keep] + lo).tolist(), cols[keep].tolist()))
    return pairs


def worlds(feats: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    """``feats`` and ``count - 1`` copies whose centred features have their dimensions permuted: a collection of
    real feature statistics ``count`` times larger, each copy keeping its neighbourhoods."""
    rng = np.random.default_rng(seed)
    mean = feats.mean(axis=0)
    out = [feats]
    for _ in range(count - 1):
        copy = np.maximum(mean + (feats - mean)[:, rng.permutation(feats.shape[1])], 0.0)
        out.append((copy / np.linalg.norm(copy, axis=1, keepdims=True)).astype(np.float32))
    return np.concatenate(out)


def emit(doc: dict, out: Path | None) -> None:
    """Print the result document, and write it to ``out`` when given (the results files in ``results/``)."""
    text = json.dumps(doc, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")


def rss_mb(pid: int) -> float:
    """A process's resident memory now, in MB (Linux)."""
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 600, headers: dict | None = None) -> dict:
    """Wait until `stl10sim serve` on ``port`` answers its health check; its document."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/v1/health", headers=headers or {})
            response = conn.getresponse()
            if response.status == 200:
                return json.loads(response.read())
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not start in time")
