"""Features made elsewhere as a source kind: reading and checking such a file, and what an imported collection
is when reopened (no images). The import job itself (``stl10sim import``) is ``ingest.importing``.

An ``(N, 1280)`` float32 or float16 array (another machine's extraction, a distributed job's output, another
pipeline's MobileNetV2 features) is checked (shape, dtype, finite, non-zero rows) and L2-normalised chunk by
chunk from a memory map, so memory stays at one chunk at a million images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity import store
from stl10_similarity.errors import InputError, MissingArtifactError, NoImagesError
from stl10_similarity.params import DIM
from stl10_similarity.progress import SILENT, Progress

KIND = "import"
KEYS_ARE_PATHS = False  # unless the import gave --paths (its record says so)
REOPENS_BY_KEYS = False  # reopened, it holds every image of the collection, whatever keys are given
CHUNK_ROWS = 65_536  # rows checked and normalised at a time (320 MB of float32 at 1280 dimensions)


def open_features(path: Path, *, dim: int | None = DIM, min_rows: int = 1, option: str = "features") -> np.ndarray:
    """A 2-D float32/float16 ``.npy`` as a read-only memory map, its shape and dtype checked (``dim``: the
    columns it must have; None for any)."""
    try:
        raw = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{{{option}}} {path} is not a readable .npy array: {exc}", options=(option,)) from exc
    want = f"(N, {dim})" if dim else "(N, D)"
    if raw.ndim != 2 or raw.shape[0] < min_rows or raw.shape[1] < 2 or (dim and raw.shape[1] != dim):
        raise InputError(f"{{{option}}} {path} must be {want} with N >= {min_rows}, got shape {raw.shape}",
                         options=(option,))
    if raw.dtype not in (np.float32, np.float16):
        raise InputError(f"{{{option}}} {path} must be float32 or float16, got {raw.dtype}", options=(option,))
    return raw


def normalised_chunks(raw: np.ndarray, path: Path, *, option: str = "features",
                      progress: Progress = SILENT) -> Iterator[np.ndarray]:
    """``raw``'s rows as unit float32 rows, a chunk at a time; NaN, infinite or all-zero rows are refused."""
    bar = progress.bar(len(raw), "check and normalise", unit="row")
    for lo in range(0, len(raw), CHUNK_ROWS):
        block = np.asarray(raw[lo : lo + CHUNK_ROWS], dtype=np.float32)
        if not np.isfinite(block).all():
            row = lo + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise InputError(f"{{{option}}} {path}: row {row} holds NaN or infinite values", options=(option,))
        # each row scaled by its largest magnitude first: the squares of finite values near 3e38 overflow float32
        # (a norm of inf, and a row of zeros), those of values near 1e-30 underflow (a norm of 0)
        scale = np.abs(block).max(axis=1, keepdims=True)
        if (scale == 0).any():
            row = lo + int(np.flatnonzero(scale[:, 0] == 0)[0])
            raise InputError(f"{{{option}}} {path}: row {row} is all zeros", options=(option,))
        scaled = block / scale
        bar.update(len(block))
        yield scaled / np.linalg.norm(scaled, axis=1, keepdims=True)
    bar.close()


def describe_record(record: dict[str, Any]) -> str:
    return f"imported from {record.get('features')}"


def reopen(record: dict[str, Any], keys: list[str] | None = None) -> Any:
    """An imported collection has no images to reopen."""
    raise NoImagesError(f"the collection was imported from features ({record.get('features')}): it holds no "
                        "images to show; query it by id (text or --json)")


def has_features(home: Path) -> bool:
    """Whether ``home`` holds a collection's features (or something unreadable in their place)."""
    try:
        store.features_manifest(home, make_cmd="stl10sim import")
    except MissingArtifactError:
        return False
    except InputError:
        return True  # something unreadable is there: still not ours to overwrite silently
    return True
