"""Collections from features made elsewhere: ``stl10sim import --features F.npy --collection NAME``.

An ``(N, 1280)`` float32 or float16 array (another machine's extraction, a distributed job's output, another
pipeline's MobileNetV2 features) becomes a collection like any other: its features are checked (shape, dtype,
finite, non-zero rows) and L2-normalised chunk by chunk from a memory map, so memory stays at one chunk at a
million images, and written with the same artifacts and manifest as an extraction. Index, query by id, evaluate,
duplicates and serve work on it. It has no images: grids and the page's pictures need the images, and
``query --image`` needs the model the features came from, which the import records only when told (``weights``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity import store
from stl10_similarity.errors import InputError, MissingArtifactError, NoImagesError
from stl10_similarity.params import DIM
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.store.artifacts import (
    cache_lock,
    commit_staged,
    library_versions,
    staging_dir,
    write_npy,
    write_npy_chunks,
)
from stl10_similarity.store.paths import features_dir

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


def import_features(features: Path, home: Path, *, labels: Path | None = None, class_names: Path | None = None,
                    paths: Path | None = None, weights: str | None = None, image_size: int | None = None,
                    force: bool = False, wait: bool = True, progress: Progress = SILENT) -> dict[str, Any]:
    """Make the collection in ``home`` from a features file (and optional labels, class names, paths); return
    its features manifest. ``weights``/``image_size``: the model the features came from, for ``query --image``.

    Raises:
        InputError: a file is unreadable or malformed, or ``home`` holds a collection already (without ``force``).
    """
    from stl10_similarity.ingest.model import weights_identity

    started = time.time()
    features = Path(features).resolve()
    raw = open_features(features)
    n = len(raw)
    label_array, names = _labels(labels, class_names, n)
    keys = _paths(paths, n)
    identity = weights_identity(weights) if weights is not None else None  # checked before any work
    from stl10_similarity.collections import (
        forgotten_if_failed,  # collections reads index and extract: imported when used
    )

    with forgotten_if_failed(home), cache_lock(home, wait=wait, progress=progress):
        folder = features_dir(home)
        if not force and _has_features(home):
            raise InputError(f"{home} holds a collection already: import with {{force}} to replace it, or choose "
                             "another {collection}", options=("force", "collection"))
        staging = staging_dir(folder)
        write_npy_chunks(staging / "features.npy", (n, DIM), np.float32,
                         normalised_chunks(raw, features, progress=progress))
        write_npy(staging / "labels.npy", label_array)
        write_npy(staging / "ids.npy", np.arange(n, dtype=np.int64))
        write_npy(staging / "keys.npy", np.array(keys if keys is not None else [str(i) for i in range(n)], dtype=str))
        artifacts = commit_staged(folder, staging)
        st = features.stat()
        params = {"model": KIND, "features": str(features), "features_stamp": [st.st_size, st.st_mtime_ns],
                  "weights": identity, "image_size": image_size, "precision": "fp32", "dim": DIM,
                  "normalised": "l2"}
        if weights is not None:
            params["weights_source"] = weights if weights in ("imagenet", "none") else str(Path(weights).resolve())
        return store.write_features_manifest(
            home, params=params, artifacts=artifacts,
            inputs={"source": {"kind": KIND, "features": str(features), "paths": keys is not None, "files": n}},
            n=n, started=started, versions=library_versions(), extra={"class_names": names, "skipped": []})


def describe_record(record: dict[str, Any]) -> str:
    return f"imported from {record.get('features')}"


def reopen(record: dict[str, Any], keys: list[str] | None = None) -> Any:
    """An imported collection has no images to reopen."""
    raise NoImagesError(f"the collection was imported from features ({record.get('features')}): it holds no "
                        "images to show; query it by id (text or --json)")


def _has_features(home: Path) -> bool:
    try:
        store.features_manifest(home, make_cmd="stl10sim import")
    except MissingArtifactError:
        return False
    except InputError:
        return True  # something unreadable is there: still not ours to overwrite silently
    return True


def _labels(labels: Path | None, class_names: Path | None, n: int) -> tuple[np.ndarray, list[str]]:
    """int16 labels (-1: unlabelled) and the class names they index."""
    names = _lines(class_names, "class_names") if class_names is not None else None
    if labels is None:
        if names:
            raise InputError("{class_names} name the classes of {labels}: give the labels too",
                             options=("class_names", "labels"))
        return np.full(n, -1, dtype=np.int16), []
    try:
        array = np.load(labels, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{{labels}} {labels} is not a readable .npy array: {exc}", options=("labels",)) from exc
    if array.shape != (n,) or array.dtype.kind not in "iu":
        raise InputError(f"{{labels}} {labels} must be ({n},) integers (one per feature row), got {array.shape} "
                         f"{array.dtype}", options=("labels",))
    top = int(array.max()) if n else -1
    if n and int(array.min()) < -1:
        raise InputError(f"{{labels}} {labels} holds {int(array.min())}: labels are class indexes, -1 for none",
                         options=("labels",))
    if top >= 2**15:  # before any name is made for them: one label of 10**9 must not ask for 10**9 names
        raise InputError(f"{{labels}} {labels} holds class {top}: at most 32,767 classes (0..32766)",
                         options=("labels",))
    if names is None:
        names = [str(i) for i in range(top + 1)]
    elif top >= len(names):
        raise InputError(f"{{labels}} {labels} holds class {top} but {{class_names}} names {len(names)} classes",
                         options=("labels", "class_names"))
    return array.astype(np.int16), names


def _paths(paths: Path | None, n: int) -> list[str] | None:
    if paths is None:
        return None
    lines = _lines(paths, "paths")
    if len(lines) != n:
        raise InputError(f"{{paths}} {paths} has {len(lines)} lines, one per feature row ({n}) expected",
                         options=("paths",))
    return lines


def _lines(path: Path, option: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{{{option}}} {path} is not a readable UTF-8 text file: {exc}", options=(option,)) from exc
    # one name per "\n" line (a final newline optional): splitlines() would also split names at U+2028, U+0085,
    # form feeds and the like, which are legal in file names, and shift every later path by one row
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if any(not line.strip() for line in lines):
        raise InputError(f"{{{option}}} {path} has an empty line: one name per line", options=(option,))
    return lines
