"""Index shards built as Ray tasks: the index wing's Ray adapter (the optional ``ray`` extra).

The index stage passes its own ``build_shard`` down, so this module imports nothing from ``index`` and the two
never import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.ray_support import connect, gathered


def build_shards(build_shard: Callable[..., dict[str, Any]], jobs: list[tuple[Any, ...]], address: str | None = None,
                 progress: Progress = SILENT) -> list[dict[str, Any]]:
    """``build_shard(*job)`` for every shard, one Ray task each (they write into the collection's folder, which
    every node must see); the entries in shard order."""
    ray = connect(address, progress)
    task = ray.remote(num_cpus=1, max_retries=3)(build_shard)
    found: list[dict[str, Any]] = gathered(ray, [task.remote(*job) for job in jobs], "index shards (ray)", "shard",
                                           "building a shard", progress)
    return found
