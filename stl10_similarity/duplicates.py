"""Near-duplicate groups: pairs a forest puts in the same deep bucket, confirmed by cosine, joined into groups.

Never all pairs: in every tree of a forest over the images' top-K dimension sets the sorted bands are walked
once; images whose bands share a prefix land next to each other. A run of images sharing a prefix of some depth
is taken as candidate pairs once it is small enough (at most ``MAX_RUN`` images); larger runs are split by the
next depth. Near-identical
images (resized, re-encoded, cropped by a few pixels) share most MinHash values, so some tree almost always puts
them in one run. Within a run all cosines come from one matrix product; a pair is kept when its cosine reaches
the threshold; groups are the connected components of the kept pairs (union-find). The work is at most
``trees x N x MAX_RUN`` dot products, linear in N, never all pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from stl10_similarity.index import LoadedIndex, ShardedIndex
from stl10_similarity.index.forest import prefix_arrays
from stl10_similarity.index.signatures import minhash_signatures, token_table
from stl10_similarity.params import DuplicatesParams, EngineParams
from stl10_similarity.progress import SILENT, Progress

# images in one prefix run before it is split by the next depth; share of exact pairs found at 100,000 images:
# 0.958 at 64, 0.977 at 256, 0.989 at 1024 (4.5 s), 0.992 at 2048 (6.5 s) (docs/collections.md)
MAX_RUN = 1024
TREES = 8  # trees of top-100 dimension sets (depth 16 at 128 permutations): what the figures above were measured on


@dataclass(frozen=True)
class DuplicateGroup:
    ids: list[int]  # image ids, ascending
    min_cosine: float
    paths: list[str] | None = None  # folder collections: each image's path


def duplicate_trees(index: LoadedIndex | ShardedIndex) -> tuple[np.ndarray, np.ndarray]:
    """The sorted trees near-duplicates are looked for in: MinHash of the top-K dimension sets, ``TREES`` trees.

    Near-copies share 50-85 % of their top-100 dimensions, so deep prefixes of those sets single them out; the
    search index's shallow trees over centroid sets put whole neighbourhoods in one run instead. An index of
    top-K sets with ``TREES`` trees already holds these trees.
    """
    params = index.params
    tree_keys = getattr(index, "tree_keys", None)  # a sharded collection's trees are per shard: made here
    if params.get("sets") == "top-dims" and tree_keys is not None and tree_keys.shape[0] == TREES \
            and tree_keys.dtype != np.uint64:  # runs are read from byte strings, not band codes
        return np.asarray(tree_keys), np.asarray(index.tree_order)  # type: ignore[union-attr]
    table = token_table(int(params["num_perm"]), index.features.shape[1])
    return prefix_arrays(minhash_signatures(np.asarray(index.topk), table), TREES)


def prefix_runs(tree_keys: np.ndarray, tree_order: np.ndarray, max_run: int = MAX_RUN) -> Iterator[np.ndarray]:
    """The rows of every run of at most ``max_run`` images that share a band prefix in one tree, sorted.

    ``tree_keys``, ``tree_order``: one tree's sorted bands and their rows (``duplicate_trees``). A run is taken at
    the shallowest depth where it is small enough (its parent run was not), so every image takes part in at most
    one run per tree; runs still too large at full depth (identical bands) give their first ``max_run`` members.
    """
    n = len(tree_order)
    depth_max = tree_keys.dtype.itemsize // 4
    keys = np.frombuffer(np.ascontiguousarray(tree_keys).tobytes(), dtype=">u4").reshape(n, depth_max)
    order = np.asarray(tree_order, dtype=np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    parent_size = np.full(n, np.iinfo(np.int64).max)  # the run each position was in one depth up (none yet)
    for depth in range(1, depth_max + 1):
        change[1:] |= keys[1:, depth - 1] != keys[:-1, depth - 1]
        starts = np.flatnonzero(change)
        sizes = np.diff(np.append(starts, n))
        small = (sizes >= 2) & (sizes <= max_run) & (parent_size[starts] > max_run)
        for s, size in zip(starts[small].tolist(), sizes[small].tolist()):
            yield np.sort(order[s : s + size])
        if not (sizes > max_run).any():
            return
        parent_size = np.repeat(sizes, sizes)
    for s in starts[sizes > max_run].tolist():
        yield np.sort(order[s : s + max_run])


def tree_linked_pairs(features: np.ndarray, tree_keys: np.ndarray, tree_order: np.ndarray, threshold: float,
                      max_run: int = MAX_RUN) -> np.ndarray:
    """Distinct row pairs ``(i, j)``, ``i < j``, of one tree's prefix runs whose cosine reaches ``threshold``.

    Each run's cosines come from one small matrix product, so no list of candidate pairs is ever built:
    runs can be larger (more pairs found) for less time than comparing listed pairs one by one.
    """
    kept = []
    for members in prefix_runs(tree_keys, tree_order, max_run):
        vectors = np.asarray(features[members])
        i, j = np.nonzero(np.triu(vectors @ vectors.T >= threshold, k=1))
        kept.append(np.stack([members[i], members[j]], axis=1))
    return distinct_pairs(kept)


def distinct_pairs(parts: list[np.ndarray]) -> np.ndarray:
    """The distinct rows of some ``(m, 2)`` pair arrays, sorted (an empty ``(0, 2)`` array when there are none)."""
    parts = [pairs for pairs in parts if len(pairs)]
    if not parts:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(parts), axis=0)


def linked_pairs(index: LoadedIndex | ShardedIndex, threshold: float, max_run: int = MAX_RUN, engine: str = "local",
                 address: str | None = None, progress: Progress = SILENT) -> np.ndarray:
    """Distinct row pairs of any tree's prefix runs whose cosine reaches ``threshold``: tree by tree in this
    process, or (``engine="ray"``) one Ray task per tree, which finds the same pairs."""
    trees = duplicate_trees(index)
    if engine == "ray":
        from stl10_similarity.duplicates_ray import linked_pairs as on_ray

        return on_ray(index.features, trees, threshold, max_run, tree_linked_pairs, distinct_pairs, address, progress)
    return distinct_pairs([tree_linked_pairs(index.features, trees[0][t], trees[1][t], threshold, max_run)
                           for t in range(trees[1].shape[0])])


def find_duplicates(index: LoadedIndex | ShardedIndex, params: DuplicatesParams = DuplicatesParams(),
                    max_run: int = MAX_RUN, engine: EngineParams = EngineParams(),
                    progress: Progress = SILENT) -> list[DuplicateGroup]:
    """Groups of images whose pairwise links (forest candidates with cosine >= ``params.threshold``) connect them;
    ``engine`` says where the links are looked for (the groups are the same)."""
    linked = linked_pairs(index, params.threshold, max_run, engine.engine, engine.address, progress)
    feats = index.features
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in linked.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for node in {x for pair in linked.tolist() for x in pair}:
        groups.setdefault(find(node), []).append(node)
    out = []
    for members in groups.values():
        ids = np.array(sorted(members))
        vectors = np.asarray(feats[ids])
        scores = vectors @ vectors.T
        lowest = float(scores[np.triu_indices(len(ids), k=1)].min())  # over every pair, not only the links
        paths = None if index.paths is None else [str(index.paths[row]) for row in ids]
        out.append(DuplicateGroup(index.ids_of(ids).tolist(), round(lowest, 6), paths))
    return sorted(out, key=lambda g: g.ids[0])
