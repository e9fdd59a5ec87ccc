"""Embedding on Ray actors: :class:`RayRunner`, the ingest wing's Ray adapter (the optional ``ray`` extra).

Only the work is distributed; planning and committing stay on the driver, exactly as in-process. Each actor
holds one ``FeatureModel`` (same weights, preprocessing and precision rules as in-process) and embeds whole
chunks with the product's own decoder, reopening the source from its manifest record for just that chunk's
files. The driver writes each finished chunk through the same ``Chunks`` layout, so a rerun after a killed job
embeds only what is missing, and a killed actor is restarted by Ray and its chunk retried
(``max_restarts``/``max_task_retries``). Memory per actor: the model, one batch of decoded images and one chunk
of features (docs/scale-out.md).
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from typing import Any

import numpy as np

from stl10_similarity.errors import EngineError, ParameterError
from stl10_similarity.ingest.runners import Chunks, Embedded, EmbedJob, unreadable_in
from stl10_similarity.params import EngineParams
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.ray_support import connect, first_line
from stl10_similarity.sources import reopens_by_keys

IN_FLIGHT_PER_ACTOR = 2  # chunks queued per actor: one running, one ready, so an actor never waits on the driver


class _Embedder:
    """One Ray actor's state: the feature model, built once."""

    def __init__(self, weights: str, image_size: int, device: str, precision: str) -> None:
        from stl10_similarity.ingest.model import FeatureModel

        started = time.perf_counter()
        self.model = FeatureModel(weights, image_size, device, precision)
        self.model_seconds = time.perf_counter() - started

    def embed(self, record: dict[str, Any], keys: list[str], start: int,
              batch_size: int) -> tuple[int, np.ndarray, list[dict[str, Any]], dict[int, str], dict[str, float]]:
        """The chunk of ``keys`` (positions ``start`` on): features, unreadable files, digests, and what it cost."""
        from stl10_similarity.sources import reopen

        source = reopen(record, keys)
        parts = [self.model(self.model.stage(source.images(lo, min(lo + batch_size, len(keys)))))
                 for lo in range(0, len(keys), batch_size)]
        bad, digests = unreadable_in(source, keys, 0, len(keys), offset=start)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return start, np.concatenate(parts), bad, digests, {
            "model_seconds": self.model_seconds, "peak_mb": usage.ru_maxrss / 1024,  # KiB on Linux
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "pid": os.getpid()}


class RayRunner:
    """Embedding on ``actors`` Ray actors (default: one per CPU of the cluster, or per ``gpus_per_actor`` GPUs)."""

    name = "ray"

    def __init__(self, address: str | None = None, actors: int | None = None, gpus_per_actor: float = 0.0) -> None:
        EngineParams(engine="ray", address=address, actors=actors, gpus_per_actor=gpus_per_actor)  # validates
        self.address = address
        self.actors = actors
        self.gpus_per_actor = gpus_per_actor
        self.pool: list[Any] = []  # the live actors while a job runs (tests kill one)
        self.peak_mb = 0.0  # the largest resident set an actor reached in the last job
        self.pids: set[int] = set()  # the actor processes that embedded something in the last job
        self.cpu_seconds: dict[int, float] = {}  # CPU time each of those processes had used by its last chunk

    def settings(self, params: Any) -> tuple[str, str, int]:
        """Device, precision and batch size, resolved for the workers: CUDA when actors get GPUs, else the CPU
        (the driver may have neither)."""
        from stl10_similarity.ingest.model import default_batch_size, resolve_precision

        device = "cuda" if self.gpus_per_actor > 0 else "cpu"
        if params.device not in ("auto", device):
            raise ParameterError("device", f"{params.device}: with --engine ray the actors run on "
                                           f"{device} ({{gpus_per_actor}} {self.gpus_per_actor:g})",
                                 options=("gpus_per_actor",))
        precision = resolve_precision(params.precision, device)
        return device, precision, params.batch_size or default_batch_size(precision, device, params.image_size)

    def embed(self, job: EmbedJob, progress: Progress = SILENT) -> Embedded:
        record = job.source.describe()
        if not reopens_by_keys(record):
            raise ParameterError("engine", "ray embeds folder collections (--images DIR); STL-10 is extracted "
                                           "in-process: use --engine local")
        chunks = Chunks(job)
        todo = deque(chunks.todo())
        ray = connect(self.address, progress) if todo else None
        bar = progress.bar(chunks.n, "extract (ray)", unit="img",
                           initial=sum(min(chunks.chunk, chunks.n - s) for s in chunks.done))
        self.peak_mb, self.pids, self.cpu_seconds, model_seconds = 0.0, set(), {}, 0.0
        if ray is not None:
            keys = job.source.keys()
            count = self.actors or self._default_actors(ray)
            actor_class = ray.remote(num_cpus=1, num_gpus=self.gpus_per_actor, max_restarts=-1,
                                     max_task_retries=-1)(_Embedder)
            self.pool = [actor_class.remote(job.weights, job.image_size, job.device, job.precision)
                         for _ in range(min(count, len(todo)))]
            chunks.begin()
            progress.note(f"embedding {sum(b - a for a, b in todo)} images on {len(self.pool)} Ray actor(s) ...")
            record_ref = ray.put(record)
            pending: dict[Any, tuple[int, int, int]] = {}

            def submit(slot: int) -> None:
                if todo:
                    start, stop = todo.popleft()
                    ref = self.pool[slot].embed.remote(record_ref, keys[start:stop], start, job.batch_size)
                    pending[ref] = (start, stop, slot)

            try:
                for slot in range(len(self.pool)):
                    for _ in range(IN_FLIGHT_PER_ACTOR):
                        submit(slot)
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    start, stop, slot = pending.pop(ready[0])
                    try:
                        _, features, bad, digests, cost = ray.get(ready[0])
                    except ray.exceptions.RayError as exc:
                        raise EngineError(f"a Ray actor failed embedding images {start}..{stop - 1}: "
                                          f"{first_line(exc)}") from exc
                    for entry in bad:
                        progress.note(f"warning: skipped {entry['path']}: {entry['reason']}")
                    chunks.write(start, features, bad, digests)
                    bar.update(stop - start)
                    self.peak_mb = max(self.peak_mb, cost["peak_mb"])
                    self.pids.add(int(cost["pid"]))
                    self.cpu_seconds[int(cost["pid"])] = float(cost["cpu_seconds"])
                    model_seconds = max(model_seconds, cost["model_seconds"])
                    submit(slot)
            finally:
                for actor in self.pool:
                    ray.kill(actor)
                self.pool = []
        bar.close()
        return chunks.collect(job.device, model_seconds)

    def _default_actors(self, ray: Any) -> int:
        resources = ray.cluster_resources()
        if self.gpus_per_actor > 0:
            return max(1, int(resources.get("GPU", 0) // self.gpus_per_actor))
        return max(1, int(resources.get("CPU", 1)))
