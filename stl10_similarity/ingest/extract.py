"""Stage 2: MobileNetV2 features for a source's images, chunked, resumable and cached.

Each chunk of features is written atomically as soon as it is computed, so a
killed run resumes from its last complete chunk; chunk boundaries fall on batch
boundaries, so a resumed run gives bit-identical features to an uninterrupted one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity import store
from stl10_similarity.errors import DataError, IntegrityError, MissingArtifactError
from stl10_similarity.ingest.model import FeatureModel, weights_identity
from stl10_similarity.ingest.runners import EmbedJob, LocalRunner, Runner
from stl10_similarity.params import DIM, ExtractParams
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.sources import Source
from stl10_similarity.store import Manifest
from stl10_similarity.store.artifacts import (
    cache_lock,
    commit_staged,
    library_versions,
    load_npy,
    staging_dir,
    write_npy,
    write_npy_chunks,
)
from stl10_similarity.store.paths import features_dir

MAKE_CMD = store.EXTRACT_CMD


@dataclass(frozen=True)
class ExtractResult:
    folder: Path
    n: int
    seconds: float
    cached: bool
    resumed_chunks: int
    manifest: dict[str, Any]
    model_seconds: float = 0.0  # building the model (weights, folding, moving to the device)
    work_seconds: float = 0.0  # from the first batch read to the committed manifest
    skipped: tuple[dict[str, Any], ...] = ()  # files that could not be read: {"path", "reason", ...}
    counts: dict[str, int] | None = None  # folder collections: how many images were new, changed, removed, unchanged


def identity_params(source_identity: dict[str, Any], weights: str, image_size: int, precision: str) -> dict[str, Any]:
    """The parameters that decide what the features are (and so when the index is stale): which images
    (``Source.identity()``, or a folder collection's folder), the model and its input."""
    return {
        "model": FeatureModel.name,
        **source_identity,
        "weights": weights_identity(weights),
        "image_size": image_size,
        "precision": precision,
        "dim": DIM,
        "normalised": "l2",
    }


def _cached(home: Path, params: dict[str, Any]) -> Manifest | None:
    folder = features_dir(home)
    try:
        manifest = store.features_manifest(home)
    except (MissingArtifactError, IntegrityError):
        return None
    if {k: manifest["params"].get(k) for k in params} != params:
        return None
    try:
        for name in manifest["artifacts"]:
            load_npy(folder, manifest, name, make_cmd=MAKE_CMD)
    except IntegrityError:
        return None
    return manifest


def extract(
    source: Source,
    home: Path,
    params: ExtractParams = ExtractParams(),
    *,
    force: bool = False,
    wait: bool = True,
    progress: Progress = SILENT,
    pipelined: bool | None = None,
    runner: Runner | None = None,
) -> ExtractResult:
    """Extract features for ``source`` into ``home/features``, resuming or reusing earlier work.

    ``params.split`` and ``params.limit`` choose the source (the caller opened it); the rest shape the model.
    ``runner`` embeds (default: ``LocalRunner(pipelined)``, this process; ``pipelined``, default on GPUs, reads
    the next batches and writes finished chunks on threads while the model runs; the features are the same).
    """
    started = time.time()
    if source.size == 0:
        raise DataError(f"the source has no images: {source.describe()}")
    runner = runner or LocalRunner(pipelined)
    device, precision, batch_size = runner.settings(params)
    identity = identity_params(source.identity(), params.weights, params.image_size, precision)
    folder = features_dir(home)
    with cache_lock(home, wait=wait, progress=progress):
        if not force and (manifest := _cached(home, identity)) is not None:
            return ExtractResult(folder, manifest["n"], time.time() - started, True, 0, manifest)
        work_started = time.perf_counter()
        job = EmbedJob(source, folder / "partial", identity, params.weights, params.image_size, device, precision,
                       batch_size, params.chunk_size, force)
        embedded = runner.embed(job, progress)
        skipped, chunk = embedded.skipped, embedded.chunk
        starts = range(0, source.size, chunk)
        keep = np.ones(source.size, dtype=bool)
        keep[[entry["id"] for entry in skipped]] = False
        n = int(keep.sum())
        if n == 0:
            raise DataError(f"none of the {source.size} images could be read: {skipped[0]['path']}: {skipped[0]['reason']}")
        listed = [{"path": e["path"], "reason": e["reason"]} for e in skipped]
        manifest = commit_features(
            home, (np.load(path)[keep[s : s + chunk]] for s, path in zip(starts, embedded.files)), n,
            {"labels": source.labels()[keep], "ids": np.arange(n, dtype=np.int64),
             "keys": np.array([k for k, ok in zip(source.keys(), keep) if ok], dtype=str)},
            params=run_params(identity, params.weights, batch_size, embedded.device), source=source.describe(),
            started=started, extra={"class_names": source.class_names, "skipped": listed})
        shutil.rmtree(embedded.folder, ignore_errors=True)
        finished = time.perf_counter()
        return ExtractResult(folder, n, time.time() - started, False, embedded.resumed, manifest,
                             embedded.model_seconds, round(finished - work_started - embedded.model_seconds, 3),
                             tuple(listed))


def commit_features(home: Path, blocks: Iterable[np.ndarray], n: int, arrays: dict[str, np.ndarray], *,
                    params: dict[str, Any], source: dict[str, Any], started: float,
                    extra: dict[str, Any], libraries: tuple[str, ...] = ("torch", "torchvision")) -> Manifest:
    """The features stage's one write path (a whole extraction, a folder update, an import): the features
    streamed into staging a block at a time (memory stays at one block, even for 100,000 images), the per-row
    ``arrays`` beside them, all committed at once, then the manifest last (recording the versions of
    ``libraries`` beside numpy's and the package's)."""
    folder = features_dir(home)
    staging = staging_dir(folder)
    write_npy_chunks(staging / "features.npy", (n, DIM), np.float32, blocks)
    for name, array in arrays.items():
        write_npy(staging / f"{name}.npy", array)
    artifacts = commit_staged(folder, staging)
    return store.write_features_manifest(home, params=params, artifacts=artifacts, inputs={"source": source}, n=n,
                                         started=started, versions=library_versions(*libraries),
                                         extra=extra)


def run_params(identity: dict[str, Any], weights: str, batch_size: int, device: str) -> dict[str, Any]:
    """What a features manifest records as its parameters: the identity, and how the run went."""
    return {**identity, "weights_source": _weights_source(weights), "batch_size": batch_size, "device": device}


def _weights_source(weights: str) -> str:
    """How to load the same weights again (for ``query --image``): a keyword or an absolute path."""
    return weights if weights in ("imagenet", "none") else str(Path(weights).resolve())
