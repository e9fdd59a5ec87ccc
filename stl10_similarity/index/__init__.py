"""Stage 3: sets of each image (its nearest learned centroids, or its top-K dimensions), MinHash signatures and a
datasketch MinHashLSHForest over them.

The forest is pickled (datasketch has no other format); it is only ever unpickled after its SHA-256 matches the
manifest this stage wrote, and only for ``--method forest-query``: the other methods search the same trees
through memory-mapped arrays (``tree_keys``/``tree_order``).

``state`` (what an index records, and whether the one on disk is current), ``build`` (build, shards, update in
place), ``loaded`` (the index as arrays, from disk or built in memory); ``sets``, ``signatures``, ``forest`` and
``projection`` are its parts; ``ray_shards`` builds shards as Ray tasks.
"""

from stl10_similarity.index.build import build_index, build_shard, ensure_index, feature_ids
from stl10_similarity.index.loaded import LoadedIndex, ShardedIndex, index_in_memory, load_index, load_shard
from stl10_similarity.index.state import (
    ARTIFACTS,
    IndexResult,
    describe_params,
    index_params,
    index_state,
    last_params,
    last_shards,
    params_of,
)

__all__ = ["ARTIFACTS", "IndexResult", "LoadedIndex", "ShardedIndex", "build_index", "build_shard", "describe_params",
           "ensure_index", "feature_ids", "index_in_memory", "index_params", "index_state", "last_params",
           "last_shards", "load_index", "load_shard", "params_of"]
