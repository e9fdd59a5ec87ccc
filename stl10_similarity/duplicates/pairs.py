"""Candidate pairs: each image's nearest run-mates in the trees of a forest, with their cosines, never all pairs.

In every tree of a forest over the images' top-K dimension sets the sorted bands are walked once; images whose
bands share a prefix land next to each other. A run of images sharing a prefix of some depth is compared all
against all by one matrix product once it is small enough (at most ``MAX_RUN`` images); larger runs are split by
the next depth. From each run every image keeps its ``neighbours`` most similar run-mates at cosine >= a floor;
over all trees each image keeps its ``neighbours`` best. Near-identical images (resized, re-encoded, cropped by a
few pixels) share most MinHash values, so some tree almost always puts them in one run. The work is at most
``trees x N x MAX_RUN`` dot products, linear in N, and the pairs at most ``neighbours x N``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from stl10_similarity.index.forest import prefix_arrays
from stl10_similarity.index.signatures import minhash_signatures, token_table
from stl10_similarity.progress import SILENT, Progress

if TYPE_CHECKING:
    from stl10_similarity.index import LoadedIndex, ShardedIndex

# images in one prefix run before it is split by the next depth; share of exact pairs found at 100,000 images:
# 0.958 at 64, 0.977 at 256, 0.989 at 1024 (4.5 s), 0.992 at 2048 (6.5 s) (docs/collections.md)
MAX_RUN = 1024
TREES = 16  # trees of top-100 dimension sets (depth 8 at 128 permutations); 8 trees found 0.95 of planted copies

Pairs = tuple[np.ndarray, np.ndarray]  # (m, 2) int64 rows i < j, sorted and distinct; (m,) float32 cosines


def duplicate_trees(index: LoadedIndex | ShardedIndex) -> tuple[np.ndarray, np.ndarray]:
    """The sorted trees duplicates are looked for in: MinHash of the top-K dimension sets, ``TREES`` trees.

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


def tree_pairs(features: np.ndarray, tree_keys: np.ndarray, tree_order: np.ndarray, floor: float, neighbours: int,
               max_run: int = MAX_RUN) -> Pairs:
    """One tree's candidate pairs: each image with its ``neighbours`` most similar run-mates at cosine >= ``floor``.

    Each run's cosines come from one small matrix product, so no list of candidate pairs is ever built:
    runs can be larger (more pairs found) for less time than comparing listed pairs one by one.
    """
    kept: list[Pairs] = []
    for members in prefix_runs(tree_keys, tree_order, max_run):
        vectors = np.asarray(features[members])
        scores = vectors @ vectors.T
        np.fill_diagonal(scores, -np.inf)
        best = min(neighbours, len(members) - 1)
        cols = np.argpartition(-scores, best - 1, axis=1)[:, :best].ravel()
        rows = np.repeat(np.arange(len(members)), best)
        cosines = scores[rows, cols]
        keep = cosines >= floor
        a, b = members[rows[keep]], members[cols[keep]]
        kept.append((np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), cosines[keep].astype(np.float32)))
    return distinct_pairs(kept)


def distinct_pairs(parts: list[Pairs]) -> Pairs:
    """The distinct pairs of some ``Pairs``, sorted, each with its cosine (empty arrays when there are none)."""
    parts = [part for part in parts if len(part[0])]
    if not parts:
        return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.float32)
    pairs = np.concatenate([p for p, _ in parts])
    keys, first = np.unique(pairs[:, 0] * (int(pairs.max()) + 1) + pairs[:, 1], return_index=True)  # one int per pair
    return pairs[first], np.concatenate([c for _, c in parts])[first]


def nearest_of_each(found: Pairs, neighbours: int) -> Pairs:
    """The pairs that are among the ``neighbours`` most similar of at least one of their two images."""
    pairs, cosines = found
    if not len(pairs):
        return found
    rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
    scores = np.concatenate([cosines, cosines])
    order = np.lexsort((-scores, rows))  # by image, its most similar partners first
    starts = np.flatnonzero(np.r_[True, rows[order][1:] != rows[order][:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    kept = np.zeros(len(pairs), dtype=bool)
    kept[order[rank < neighbours] % len(pairs)] = True
    return pairs[kept], cosines[kept]


def candidate_pairs(index: LoadedIndex | ShardedIndex, floor: float, neighbours: int, max_run: int = MAX_RUN,
                    engine: str = "local", address: str | None = None, progress: Progress = SILENT) -> Pairs:
    """Each image's ``neighbours`` most similar images at cosine >= ``floor`` among its run-mates in any tree: tree
    by tree in this process, or (``engine="ray"``) one Ray task per tree, which finds the same pairs."""
    trees = duplicate_trees(index)
    if engine == "ray":
        from functools import partial

        from stl10_similarity.duplicates.ray_pairs import linked_pairs as on_ray

        found = on_ray(index.features, trees, partial(tree_pairs, floor=floor, neighbours=neighbours,
                                                      max_run=max_run), distinct_pairs, address, progress)
    else:
        bar = progress.bar(trees[1].shape[0], "duplicates: candidate pairs", unit="tree")
        parts = []
        try:
            for t in range(trees[1].shape[0]):
                parts.append(tree_pairs(index.features, trees[0][t], trees[1][t], floor, neighbours, max_run))
                bar.update(1)
        finally:
            bar.close()
        found = distinct_pairs(parts)
    return nearest_of_each(found, neighbours)
