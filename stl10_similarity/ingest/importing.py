"""Collections from features made elsewhere: ``stl10sim import --features F.npy --collection NAME``.

The features (checked and normalised by ``sources.imported``) are written through the features stage's one write
path (``ingest.extract.commit_features``), with the same artifacts and manifest as an extraction. Index, query by
id, evaluate, duplicates and serve work on the collection. It has no images: grids and the page's pictures need
them, and ``query --image`` needs the model the features came from, which the import records only when told
(``weights``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity import store
from stl10_similarity.errors import InputError
from stl10_similarity.ingest.extract import commit_features
from stl10_similarity.ingest.model import weights_identity
from stl10_similarity.params import DIM
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.sources.imported import KIND, has_features, normalised_chunks, open_features
from stl10_similarity.store.artifacts import cache_lock


def import_features(features: Path, home: Path, *, labels: Path | None = None, class_names: Path | None = None,
                    paths: Path | None = None, weights: str | None = None, image_size: int | None = None,
                    force: bool = False, wait: bool = True, progress: Progress = SILENT) -> dict[str, Any]:
    """Make the collection in ``home`` from a features file (and optional labels, class names, paths); return
    its features manifest. ``weights``/``image_size``: the model the features came from, for ``query --image``.

    Raises:
        InputError: a file is unreadable or malformed, or ``home`` holds a collection already (without ``force``).
    """
    started = time.time()
    features = Path(features).resolve()
    raw = open_features(features)
    n = len(raw)
    label_array, names = _labels(labels, class_names, n)
    keys = _paths(paths, n)
    identity = weights_identity(weights) if weights is not None else None  # checked before any work
    with store.forgotten_if_failed(home), cache_lock(home, wait=wait, progress=progress):
        if not force and has_features(home):
            raise InputError(f"{home} holds a collection already: import with {{force}} to replace it, or choose "
                             "another {collection}", options=("force", "collection"))
        arrays = {"labels": label_array, "ids": np.arange(n, dtype=np.int64),
                  "keys": np.array(keys if keys is not None else [str(i) for i in range(n)], dtype=str)}
        st = features.stat()
        params = {"model": KIND, "features": str(features), "features_stamp": [st.st_size, st.st_mtime_ns],
                  "weights": identity, "image_size": image_size, "precision": "fp32", "dim": DIM,
                  "normalised": "l2"}
        if weights is not None:
            params["weights_source"] = weights if weights in ("imagenet", "none") else str(Path(weights).resolve())
        source = {"kind": KIND, "features": str(features), "paths": keys is not None, "files": n}
        return commit_features(home, normalised_chunks(raw, features, progress=progress), n, arrays, params=params,
                               source=source, started=started, extra={"class_names": names, "skipped": []},
                               libraries=())




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
