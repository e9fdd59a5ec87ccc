"""Duplicate candidates on Ray: each duplicate tree's prefix runs as one task over features put once in the
object store (the optional ``ray`` extra); the pairs, and so the groups, are exactly the in-process ones.

``duplicates.pairs.candidate_pairs`` calls down to :func:`linked_pairs` with its own pair finder and merger, so
this module imports nothing from the rest of ``duplicates`` and they never import each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.ray_support import connect, gathered


def _tree_pairs(pairs_of_tree: Callable[..., Any], features: np.ndarray, tree_keys: np.ndarray,
                tree_order: np.ndarray) -> tuple[Any, float]:
    """One tree's pairs, and the CPU seconds the task took."""
    started = time.process_time()
    return pairs_of_tree(features, tree_keys, tree_order), time.process_time() - started


def linked_pairs(features: np.ndarray, trees: tuple[np.ndarray, np.ndarray], pairs_of_tree: Callable[..., Any],
                 merge: Callable[[list[Any]], Any], address: str | None = None, progress: Progress = SILENT,
                 costs: list[float] | None = None) -> Any:
    """The in-process candidate pairs, one Ray task per tree running ``pairs_of_tree(features, keys, order)``, the
    answers joined by ``merge``: the same pairs (``costs`` gets each task's CPU seconds)."""
    ray = connect(address, progress)
    tree_keys, tree_order = trees
    features_ref = ray.put(np.ascontiguousarray(features))
    task = ray.remote(num_cpus=1, max_retries=3)(_tree_pairs)
    refs = [task.remote(pairs_of_tree, features_ref, np.ascontiguousarray(tree_keys[t]),
                        np.ascontiguousarray(tree_order[t])) for t in range(tree_order.shape[0])]
    found: list[Any] = gathered(ray, refs, "duplicates (ray)", "tree", "looking for duplicates", progress)
    if costs is not None:
        costs.extend(cpu for _, cpu in found)
    return merge([pairs for pairs, _ in found])
