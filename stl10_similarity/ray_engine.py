"""Ray as an engine (the optional ``ray`` extra): embedding on an actor pool and near-duplicates as tasks.

Only the work is distributed; planning and committing stay on the driver, exactly as in-process:

- :class:`RayRunner` is a :class:`~stl10_similarity.runners.Runner`. Each actor holds one ``FeatureModel``
  (same weights, preprocessing and precision rules as in-process) and embeds whole chunks with the product's
  own decoder, reopening the source from its manifest record for just that chunk's files. The driver writes
  each finished chunk through the same ``Chunks`` layout, so a rerun after a killed job embeds only what is
  missing, and a killed actor is restarted by Ray and its chunk retried (``max_restarts``/``max_task_retries``).
  Memory per actor: the model, one batch of decoded images and one chunk of features (docs/scale-out.md).
- :func:`linked_pairs` runs each duplicate tree's prefix runs as one Ray task over features put once in the
  object store; the pairs, and so the groups, are exactly the in-process ones.

Ray is imported only here, and only when one of these runs.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import time
from collections import deque
from typing import Any

import numpy as np

from stl10_similarity.errors import EngineError, ParameterError
from stl10_similarity.ingest.runners import Chunks, Embedded, EmbedJob, unreadable_in
from stl10_similarity.params import EngineParams
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.sources import reopens_by_keys

CONNECT_TIMEOUT = 5.0  # seconds to reach a cluster's address before saying it is unreachable
IN_FLIGHT_PER_ACTOR = 2  # chunks queued per actor: one running, one ready, so an actor never waits on the driver


def connect(address: str | None = None, progress: Progress = SILENT) -> Any:
    """Ray, initialised: the cluster at ``address`` (``host:port``, ``ray://host:port`` or ``auto``), or a local
    one started for this process. Raises :class:`EngineError` when Ray is absent or the address unreachable."""
    try:
        import ray
    except ImportError as exc:
        raise EngineError("the ray engine needs Ray: pip install 'stl10sim[ray]' (or use --engine local)") from exc
    if ray.is_initialized():
        return ray
    if address and address != "auto":
        _reachable(address)
    progress.note(f"connecting to the Ray cluster at {address} ..." if address else "starting a local Ray ...")
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EngineError(f"cannot start or reach Ray{f' at {address}' if address else ''}: "
                          f"{str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}") from exc
    return ray


def _reachable(address: str) -> None:
    """Fail in seconds when nothing listens at the address, before Ray's own connection retries start."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"--address {address}: give host:port (the head node's GCS port, 6379 by default), "
                          f"ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise EngineError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from exc


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
                                          f"{_first_line(exc)}") from exc
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


def _first_line(exc: BaseException) -> str:
    """A Ray error's cause in one line (Ray wraps the worker's traceback around it)."""
    cause = getattr(exc, "cause", None)
    text = str(cause if cause is not None else exc).strip().splitlines()
    return text[-1][:300] if text else exc.__class__.__name__


# ---------------------------------------------------------------- near-duplicates


def _tree_pairs(features: np.ndarray, tree_keys: np.ndarray, tree_order: np.ndarray, threshold: float,
                max_run: int) -> tuple[np.ndarray, float]:
    """One tree's linked pairs, and the CPU seconds the task took."""
    from stl10_similarity.duplicates import tree_linked_pairs

    started = time.process_time()
    return tree_linked_pairs(features, tree_keys, tree_order, threshold, max_run), time.process_time() - started



def linked_pairs(features: np.ndarray, trees: tuple[np.ndarray, np.ndarray], threshold: float, max_run: int,
                 address: str | None = None, progress: Progress = SILENT,
                 costs: list[float] | None = None) -> np.ndarray:
    """``duplicates.linked_pairs``, one Ray task per tree: the same pairs (``costs`` gets each task's CPU seconds)."""
    ray = connect(address, progress)
    tree_keys, tree_order = trees
    features_ref = ray.put(np.ascontiguousarray(features))
    task = ray.remote(num_cpus=1, max_retries=3)(_tree_pairs)
    from stl10_similarity.duplicates import distinct_pairs

    refs = [task.remote(features_ref, np.ascontiguousarray(tree_keys[t]), np.ascontiguousarray(tree_order[t]),
                        threshold, max_run) for t in range(tree_order.shape[0])]
    found = _gathered(ray, refs, "duplicates (ray)", "tree", "looking for duplicates", progress)
    if costs is not None:
        costs.extend(cpu for _, cpu in found)
    return distinct_pairs([pairs for pairs, _ in found])


def _gathered(ray: Any, refs: list[Any], desc: str, unit: str, what: str, progress: Progress) -> list[Any]:
    """The results of Ray tasks, in the order given, with a progress bar moving as each finishes; a failed task
    is an :class:`EngineError` saying ``what`` it was doing."""
    bar = progress.bar(len(refs), desc, unit=unit)
    try:
        remaining = list(refs)
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            ray.get(done[0])  # raises now for a failed task
            bar.update(1)
        return ray.get(refs)
    except ray.exceptions.RayError as exc:
        raise EngineError(f"a Ray task failed {what}: {_first_line(exc)}") from exc
    finally:
        bar.close()


# ---------------------------------------------------------------- sharded collections


def build_shards(jobs: list[tuple[Any, ...]], address: str | None = None,
                 progress: Progress = SILENT) -> list[dict[str, Any]]:
    """``index.build_shard(*job)`` for every shard, one Ray task each (they write into the collection's folder,
    which every node must see); the entries in shard order."""
    from stl10_similarity.index import build_shard

    ray = connect(address, progress)
    task = ray.remote(num_cpus=1, max_retries=3)(build_shard)
    return _gathered(ray, [task.remote(*job) for job in jobs], "index shards (ray)", "shard", "building a shard",
                     progress)


class _ShardServer:
    """One Ray actor per shard: it memory-maps its shard once and answers a ``search.Shard``'s questions."""

    def __init__(self, home: str, number: int) -> None:
        from pathlib import Path

        from stl10_similarity.index import load_shard
        from stl10_similarity.search import Shard

        self.shard = Shard(load_shard(Path(home), number))

    def call(self, method: str, args: tuple[Any, ...]) -> Any:
        return getattr(self.shard, method)(*args)

    def size(self) -> int:
        return self.shard.n


class RayParts:
    """A sharded collection's shards as Ray actors (``search.LocalParts``' interface): each round of questions is
    sent to every shard at once and answered in parallel."""

    def __init__(self, home: Any, shards: int, address: str | None = None, progress: Progress = SILENT) -> None:
        self.ray = connect(address, progress)
        # no CPU reserved (4 shards must fit a 2-CPU machine, beside embedding actors), spread over the nodes
        server = self.ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1,
                                 scheduling_strategy="SPREAD")(_ShardServer)
        progress.note(f"starting {shards} Ray actor(s), one per shard ...")
        self.actors = [server.remote(str(home), s) for s in range(shards)]
        try:
            self.sizes = self.ray.get([actor.size.remote() for actor in self.actors])
        except self.ray.exceptions.RayError as exc:
            raise EngineError(f"a shard's Ray actor could not open it: {_first_line(exc)}") from exc

    def each(self, method: str, calls: list[tuple[int, tuple[Any, ...]]]) -> list[Any]:
        try:
            return self.ray.get([self.actors[part].call.remote(method, args) for part, args in calls])
        except self.ray.exceptions.RayError as exc:
            raise EngineError(f"a shard's Ray actor failed: {_first_line(exc)}") from exc

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
