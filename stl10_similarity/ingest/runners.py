"""Where embedding runs: the :class:`Runner` seam between planning what to embed and committing it.

Extraction (``extract.extract``) and folder updates (``update.update_folder``) decide *which* images to embed
and commit the result; a runner only turns an :class:`EmbedJob` into chunk files on disk (:class:`Embedded`).
Every runner writes the same layout through :class:`Chunks`: one ``.npy`` per chunk of whole batches, written
atomically after its lists of unreadable files and digests, so a killed run of any runner resumes from its
finished chunks and features are bit-identical whichever runner made them.

Runners: ``local`` (:class:`LocalRunner`, this process) and ``ray`` (``ingest.ray_runner.RayRunner``, actors on a
Ray cluster); ``ingest.engines.runner_for`` picks one by name.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from stl10_similarity.ingest.pipeline import BackgroundWriter, prefetched
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.sources import Source
from stl10_similarity.store.artifacts import write_json, write_npy

# where reading and writing run on threads beside the model: on a 2-core CPU they only slowed it (docs/decisions.md)
PIPELINE_DEVICES = ("cuda", "mps")


@dataclass(frozen=True)
class EmbedJob:
    """What to embed and how: the caller has planned it, a runner carries it out."""

    source: Source  # the images to embed, in order
    partial: Path  # where the chunks go; kept between runs of the same job
    identity: dict[str, Any]  # what makes a rerun the same work (chunks of another identity are thrown away)
    weights: str
    image_size: int
    device: str
    precision: str
    batch_size: int
    chunk_size: int
    force: bool = False


@dataclass(frozen=True)
class Embedded:
    """A source's features, chunk by chunk on disk, and the files that could not be read."""

    folder: Path  # the partial folder holding the chunks (removed by the caller once it has used them)
    files: list[Path]  # one .npy per chunk, in order
    chunk: int  # images per chunk
    skipped: list[dict[str, Any]]  # {"id": position in the source, "path", "reason"}
    resumed: int  # chunks found done from an earlier (killed) run
    digests: dict[int, str]  # position -> SHA-256 of the file's bytes, for sources that read files
    device: str = "cpu"  # where the model ran
    model_seconds: float = 0.0  # building the model(s): weights, folding, moving to the device


class Runner(Protocol):
    name: str

    def settings(self, params: Any) -> tuple[str, str, int]:
        """The device, precision and batch size ``ExtractParams`` resolve to where this runner's model runs."""

    def embed(self, job: EmbedJob, progress: Progress = SILENT) -> Embedded:
        """Embed every image of ``job.source`` not already in a finished chunk of ``job.partial``."""


class Chunks:
    """The chunk files of one job: which are done, where chunk ``c`` goes, and writing one durably."""

    def __init__(self, job: EmbedJob) -> None:
        self.partial = job.partial
        self.n = job.source.size
        self.chunk = max(1, job.chunk_size // job.batch_size) * job.batch_size  # whole batches: bit-identical resumes
        self._run = {**job.identity, "n": self.n, "batch_size": job.batch_size, "chunk": self.chunk,
                     "device": job.device}
        self._fresh = job.force or not _same_run(self.partial, self._run)
        self.starts = list(range(0, self.n, self.chunk))
        self.done = [] if self._fresh else [s for s in self.starts if self.file(s).is_file()]

    def begin(self) -> None:
        """Claim the partial folder for this job (once the model is built: a bad model writes nothing)."""
        if self._fresh:
            shutil.rmtree(self.partial, ignore_errors=True)
        write_json(self.partial / "run.json", self._run)

    def file(self, start: int, suffix: str = ".npy") -> Path:
        """The chunk holding image ``start`` (its features; ``.skipped.json``: the files it could not read;
        ``.digests.json``: the SHA-256 of the files it read, for sources that read files)."""
        return self.partial / f"chunk_{start // self.chunk:06d}{suffix}"

    def todo(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of every chunk still to embed."""
        return [(s, min(s + self.chunk, self.n)) for s in self.starts if s not in self.done]

    def batches(self, start: int, stop: int, batch_size: int) -> list[tuple[int, int]]:
        return [(lo, min(lo + batch_size, stop)) for lo in range(start, stop, batch_size)]

    def jobs(self, start: int, features: np.ndarray, bad: list[dict[str, Any]],
             digests: dict[int, str]) -> list[tuple[Any, ...]]:
        """The writes that make a chunk durable, lists first: a chunk's ``.npy`` on disk means it is done."""
        out: list[tuple[Any, ...]] = [(write_json, self.file(start, ".skipped.json"), bad)]
        if digests:
            out.insert(0, (write_json, self.file(start, ".digests.json"), {str(i): d for i, d in digests.items()}))
        out.append((write_npy, self.file(start), features))
        return out

    def write(self, start: int, features: np.ndarray, bad: list[dict[str, Any]], digests: dict[int, str]) -> None:
        for job in self.jobs(start, features, bad, digests):
            job[0](*job[1:])

    def collect(self, device: str, model_seconds: float) -> Embedded:
        skipped = [entry for s in self.starts for entry in _read_list(self.file(s, ".skipped.json"), [])]
        hashed = {int(i): d for s in self.starts for i, d in _read_list(self.file(s, ".digests.json"), {}).items()}
        return Embedded(self.partial, [self.file(s) for s in self.starts], self.chunk, skipped, len(self.done),
                        hashed, device, round(model_seconds, 3))


def unreadable_in(source: Source, keys: list[str], start: int, stop: int,
                  offset: int = 0) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """The files of ``start:stop`` the source could not read (``{"id", "path", "reason"}``) and the digests of
    those it read, by position plus ``offset`` (a source that reads only part of the job counts from 0)."""
    unreadable: dict[int, str] = getattr(source, "unreadable", {})  # filled as a folder source decodes
    digests: dict[int, str] = getattr(source, "digests", {})
    bad = [{"id": i + offset, "path": keys[i], "reason": unreadable[i]} for i in range(start, stop) if i in unreadable]
    return bad, {i + offset: digests[i] for i in range(start, stop) if i in digests}


class LocalRunner:
    """Embedding in this process, batch by batch; ``pipelined`` (default: on GPUs) reads the next batches and
    writes finished chunks on threads while the model runs (the features are the same either way)."""

    name = "local"

    def __init__(self, pipelined: bool | None = None) -> None:
        self.pipelined = pipelined

    def settings(self, params: Any) -> tuple[str, str, int]:
        from stl10_similarity.ingest.model import run_settings

        return run_settings(params)

    def embed(self, job: EmbedJob, progress: Progress = SILENT) -> Embedded:
        from stl10_similarity.ingest.model import FeatureModel

        chunks = Chunks(job)
        todo = chunks.todo()
        started = time.perf_counter()
        model = FeatureModel(job.weights, job.image_size, job.device, job.precision) if todo else None
        model_seconds = time.perf_counter() - started
        chunks.begin()
        device = model.device if model is not None else job.device
        source, n = job.source, chunks.n
        bar = progress.bar(n, "extract", unit="img", initial=sum(min(chunks.chunk, n - s) for s in chunks.done))
        pipelined = self.pipelined if self.pipelined is not None else device in PIPELINE_DEVICES
        batches = [b for start, stop in todo for b in chunks.batches(start, stop, job.batch_size)]
        # each batch read and laid out for the device (pinned memory on CUDA): on the reading thread when pipelined
        reads = ((lo, hi, model.stage(source.images(lo, hi))) for lo, hi in batches)  # type: ignore[union-attr]
        writer = BackgroundWriter() if pipelined else None
        parts: list[np.ndarray] = []
        keys = source.keys()
        try:
            for _lo, hi, images in prefetched(reads) if pipelined else reads:
                parts.append(model(images))  # type: ignore[misc]
                bar.update(len(parts[-1]))
                if hi == n or hi % chunks.chunk == 0:  # a chunk is complete: make it durable
                    first = (hi - 1) // chunks.chunk * chunks.chunk
                    bad, digests = unreadable_in(source, keys, first, hi)
                    for entry in bad:
                        progress.note(f"warning: skipped {entry['path']}: {entry['reason']}")
                    for write in chunks.jobs(first, np.concatenate(parts), bad, digests):
                        if writer is not None:
                            writer.submit(*write)
                        else:
                            write[0](*write[1:])
                    parts = []
        finally:
            if writer is not None:
                writer.close()  # every finished chunk is on disk before we go on (or give up)
        bar.close()
        return chunks.collect(device, model_seconds)


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
