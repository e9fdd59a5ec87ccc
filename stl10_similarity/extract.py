"""Stage 2: MobileNetV2 features for a source's images, chunked, resumable and cached.

Each chunk of features is written atomically as soon as it is computed, so a
killed run resumes from its last complete chunk; chunk boundaries fall on batch
boundaries, so a resumed run gives bit-identical features to an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import (
    cache_lock,
    commit_staged,
    library_versions,
    load_npy,
    read_manifest,
    staging_dir,
    write_json,
    write_manifest,
    write_npy,
    write_npy_chunks,
)
from .errors import DataError, IntegrityError, MissingArtifactError
from .model import FeatureModel, run_settings, weights_identity
from .params import DIM, ExtractParams
from .pipeline import BackgroundWriter, prefetched
from .paths import features_dir
from .progress import SILENT, Progress
from .sources import Source

MAKE_CMD = "stl10sim extract"
# where reading and writing run on threads beside the model: on a 2-core CPU they only slowed it (docs/decisions.md)
PIPELINE_DEVICES = ("cuda", "mps")


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


def load_manifest(cache_dir: Path) -> dict[str, Any]:
    return read_manifest(features_dir(cache_dir), stage="extract", make_cmd=MAKE_CMD)


def source_record(manifest: dict[str, Any]) -> dict[str, Any]:
    """The source a features manifest was made from (manifests before sources existed named only the data dir)."""
    inputs = manifest.get("inputs", {})
    if "source" in inputs:
        return inputs["source"]
    params = manifest["params"]
    return {"kind": "stl10", "data_dir": inputs["data_dir"], "split": params["split"], "limit": params["limit"],
            "parts": manifest.get("parts")}


def _cached(folder: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    try:
        manifest = read_manifest(folder, stage="extract", make_cmd=MAKE_CMD)
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
    cache_dir: Path,
    params: ExtractParams = ExtractParams(),
    *,
    force: bool = False,
    wait: bool = True,
    progress: Progress = SILENT,
    pipelined: bool | None = None,
) -> ExtractResult:
    """Extract features for ``source`` into ``cache_dir/features``, resuming or reusing earlier work.

    ``params.split`` and ``params.limit`` choose the source (the caller opened it); the rest shape the model.
    ``pipelined`` (default: on GPUs) reads the next batches and writes finished chunks on threads while the
    model runs; the features are the same either way.
    """
    started = time.time()
    if source.size == 0:
        raise DataError(f"the source has no images: {source.describe()}")
    device, precision, batch_size = run_settings(params)
    identity = identity_params(source.identity(), params.weights, params.image_size, precision)
    folder = features_dir(cache_dir)
    with cache_lock(cache_dir, wait=wait, progress=progress):
        if not force and (manifest := _cached(folder, identity)) is not None:
            return ExtractResult(folder, manifest["n"], time.time() - started, True, 0, manifest)
        model_started = time.perf_counter()
        model = FeatureModel(params.weights, params.image_size, device, precision)
        work_started = time.perf_counter()
        embedded = embed_chunks(source, folder / "partial", identity, model, batch_size, params.chunk_size,
                                force=force, pipelined=pipelined, progress=progress)
        skipped, chunk = embedded.skipped, embedded.chunk
        starts = range(0, source.size, chunk)
        keep = np.ones(source.size, dtype=bool)
        keep[[entry["id"] for entry in skipped]] = False
        n = int(keep.sum())
        if n == 0:
            raise DataError(f"none of the {source.size} images could be read: {skipped[0]['path']}: {skipped[0]['reason']}")
        staging = staging_dir(folder)
        # stream the chunks into one file: memory stays at one chunk even for the 100,000 unlabelled images
        write_npy_chunks(staging / "features.npy", (n, DIM), np.float32,
                         (np.load(path)[keep[s : s + chunk]] for s, path in zip(starts, embedded.files)))
        write_npy(staging / "labels.npy", source.labels()[keep])
        write_npy(staging / "ids.npy", np.arange(n, dtype=np.int64))
        write_npy(staging / "keys.npy", np.array([k for k, ok in zip(source.keys(), keep) if ok], dtype=str))
        artifacts = commit_staged(folder, staging)
        record = source.describe()
        listed = [{"path": e["path"], "reason": e["reason"]} for e in skipped]
        manifest = write_manifest(
            folder,
            stage="extract",
            params={**identity, "weights_source": _weights_source(params.weights), "batch_size": batch_size,
                    "device": model.device},
            artifacts=artifacts,
            inputs={"source": record},
            n=n,
            started=started,
            versions=library_versions("torch", "torchvision"),
            extra={"class_names": source.class_names, "skipped": listed},
        )
        shutil.rmtree(embedded.folder, ignore_errors=True)
        finished = time.perf_counter()
        return ExtractResult(folder, n, time.time() - started, False, embedded.resumed, manifest,
                             round(work_started - model_started, 3), round(finished - work_started, 3), tuple(listed))


@dataclass(frozen=True)
class Embedded:
    """A source's features, chunk by chunk on disk, and the files that could not be read."""

    folder: Path  # the partial folder holding the chunks (removed by the caller once it has used them)
    files: list[Path]  # one .npy per chunk, in order
    chunk: int  # images per chunk
    skipped: list[dict[str, Any]]  # {"id": position in the source, "path", "reason"}
    resumed: int  # chunks found done from an earlier (killed) run
    digests: dict[int, str]  # position -> SHA-256 of the file's bytes, for sources that read files


def embed_chunks(source: Source, partial: Path, identity: dict[str, Any], model: FeatureModel, batch_size: int,
                 chunk_size: int, *, force: bool = False, pipelined: bool | None = None,
                 progress: Progress = SILENT) -> Embedded:
    """Run ``model`` over every image of ``source``, saving each chunk atomically in ``partial``.

    Chunks from an earlier run of the same ``identity`` (same source, model, batch and chunk sizes) are kept,
    so a killed run resumes where it stopped; chunk boundaries fall on batch boundaries, so resumed features
    are bit-identical. ``pipelined`` (default: on GPUs) reads ahead and writes on threads.
    """
    chunk = max(1, chunk_size // batch_size) * batch_size  # whole batches: resumed runs stay bit-identical
    run = {**identity, "n": source.size, "batch_size": batch_size, "chunk": chunk, "device": model.device}
    if force or not _same_run(partial, run):
        shutil.rmtree(partial, ignore_errors=True)
    write_json(partial / "run.json", run)
    starts = range(0, source.size, chunk)

    def chunk_file(start: int, suffix: str = ".npy") -> Path:
        """The chunk holding image ``start`` (its features; ``.skipped.json``: the files it could not read;
        ``.digests.json``: the SHA-256 of the files it read, for sources that read files)."""
        return partial / f"chunk_{start // chunk:06d}{suffix}"

    done = [s for s in starts if chunk_file(s).is_file()]
    bar = progress.bar(source.size, "extract", unit="img", initial=sum(min(chunk, source.size - s) for s in done))
    todo = [s for s in starts if s not in done]
    batches = [(lo, min(lo + batch_size, s + chunk, source.size)) for s in todo
               for lo in range(s, min(s + chunk, source.size), batch_size)]
    if pipelined is None:
        pipelined = model.device in PIPELINE_DEVICES
    # each batch read and laid out for the device (pinned memory on CUDA): on the reading thread when pipelined
    reads = ((lo, hi, model.stage(source.images(lo, hi))) for lo, hi in batches)
    writer = BackgroundWriter() if pipelined else None
    parts: list[np.ndarray] = []
    keys = source.keys()
    unreadable: dict[int, str] = getattr(source, "unreadable", {})  # filled as a folder source decodes
    digests: dict[int, str] = getattr(source, "digests", {})
    try:
        for lo, hi, images in prefetched(reads) if pipelined else reads:
            parts.append(model(images))
            bar.update(len(parts[-1]))
            if hi == source.size or hi % chunk == 0:  # a chunk is complete: make it durable
                first = (hi - 1) // chunk * chunk
                bad = [{"id": i, "path": keys[i], "reason": unreadable[i]} for i in range(first, hi) if i in unreadable]
                for entry in bad:
                    progress.note(f"warning: skipped {entry['path']}: {entry['reason']}")
                jobs = [(write_json, chunk_file(first, ".skipped.json"), bad),
                        (write_npy, chunk_file(first), np.concatenate(parts))]
                if digests:
                    hashed = {str(i): digests[i] for i in range(first, hi) if i in digests}
                    jobs.insert(0, (write_json, chunk_file(first, ".digests.json"), hashed))
                for job in jobs:  # the lists first: a chunk's .npy on disk means the chunk is done
                    if writer is not None:
                        writer.submit(*job)
                    else:
                        job[0](*job[1:])
                parts = []
    finally:
        if writer is not None:
            writer.close()  # every finished chunk is on disk before we go on (or give up)
    bar.close()
    skipped = [entry for s in starts for entry in _read_list(chunk_file(s, ".skipped.json"), [])]
    hashed = {int(i): d for s in starts for i, d in _read_list(chunk_file(s, ".digests.json"), {}).items()}
    return Embedded(partial, [chunk_file(s) for s in starts], chunk, skipped, len(done), hashed)


def _read_list(path: Path, empty: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return empty  # a chunk written before these lists existed, or with nothing in them


def _same_run(partial: Path, run: dict[str, Any]) -> bool:
    try:
        return json.loads((partial / "run.json").read_text()) == run
    except (OSError, ValueError):
        return False


def _weights_source(weights: str) -> str:
    """How to load the same weights again (for ``query --image``): a keyword or an absolute path."""
    return weights if weights in ("imagenet", "none") else str(Path(weights).resolve())
