"""Writes a tiny STL-10 in the official binary layout (used by conftest and the CLI tests)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def make_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """Class-coloured, textured 96x96 images as ``(n, 3, 96, 96)`` uint8 in row-major (H, W) order."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:96]
    out = np.empty((len(labels), 3, 96, 96), np.uint8)
    for i, label in enumerate(labels):
        base = np.array([(label * 37) % 256, (label * 91 + 40) % 256, (label * 53 + 90) % 256], float)
        stripes = 60 * np.sin((xx * (label + 1) + yy * (9 - label)) / 12.0)
        noise = rng.normal(0, 25, (3, 96, 96))
        out[i] = np.clip(base[:, None, None] + stripes[None] + noise, 0, 255).astype(np.uint8)
    return out


def write_stl10(out: Path, n_train: int = 40, n_test: int = 60, n_unlabeled: int = 20) -> Path:
    """Write ``out/stl10_binary`` (and ``out/stl10_binary.tar.gz``); return the tarball path."""
    root = out / "stl10_binary"
    root.mkdir(parents=True, exist_ok=True)
    for part, n, seed in (("train", n_train, 1), ("test", n_test, 2), ("unlabeled", n_unlabeled, 3)):
        labels = np.arange(n) % 10 if part != "unlabeled" else np.zeros(n, int)
        images = make_images(labels, seed)
        # official layout: channel-major, column-major (each channel stored transposed)
        (root / f"{part}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())
        if part != "unlabeled":
            (root / f"{part}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
    (root / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "fold_indices.txt").write_text("0 1 2\n")
    archive = out / "stl10_binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="stl10_binary")
    return archive
