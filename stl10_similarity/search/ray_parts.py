"""A sharded collection's shards as Ray actors: the search wing's Ray adapter (the optional ``ray`` extra)."""

from __future__ import annotations

from typing import Any

from stl10_similarity.errors import EngineError
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.ray_support import connect, first_line


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
            raise EngineError(f"a shard's Ray actor could not open it: {first_line(exc)}") from exc

    def each(self, method: str, calls: list[tuple[int, tuple[Any, ...]]]) -> list[Any]:
        try:
            return self.ray.get([self.actors[part].call.remote(method, args) for part, args in calls])
        except self.ray.exceptions.RayError as exc:
            raise EngineError(f"a shard's Ray actor failed: {first_line(exc)}") from exc

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
