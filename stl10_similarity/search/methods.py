"""The methods, each ``search(searcher, q, wanted) -> rows, scores, examined`` over a :class:`Searcher`'s parts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from stl10_similarity.search.shard import QueryVector

if TYPE_CHECKING:  # the searcher calls these; they call back only through the instance they are given
    from stl10_similarity.search.searcher import Searcher


def _most(rows: np.ndarray, counts: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` rows with the largest integer ``counts``, ties by smaller row: one partition, no full sort."""
    if len(rows) <= keep:
        return rows
    counts = np.asarray(counts).astype(np.int64)
    # one distinct int64 key per row: the count above the row's bits (scores < 2**24, rows < 2**38 here)
    key = (counts << 38) - rows.astype(np.int64)
    return np.sort(rows[np.argpartition(-key, keep - 1)[:keep]])


def _exact(s: Searcher, q: QueryVector, wanted: int) -> tuple[np.ndarray, np.ndarray, int]:
    local = s.local(q)
    found = s.parts.each("exact", [(p, (local[p], wanted)) for p in range(len(local))])
    rows = s.joined([r for r, _ in found])
    scores = np.concatenate([sc for _, sc in found])
    top, best = s.ranked(rows, scores, wanted)
    return top, best, s.index.n


def _by_jaccard(gather: Callable[[Searcher, QueryVector, int], np.ndarray]) -> Callable[..., Any]:
    def method(s: Searcher, q: QueryVector, wanted: int) -> tuple[np.ndarray, np.ndarray, int]:
        ids = s.widen(q, gather(s, q, wanted), wanted)
        top, best = s.ranked(ids, s.estimated_jaccard(q, ids), wanted)
        return top, best, len(ids)
    return method


def _pool(s: Searcher, q: QueryVector, wanted: int) -> np.ndarray:
    return s.forest_candidates(q, s.budget(wanted))


def chosen(s: Searcher, q: QueryVector, wanted: int) -> tuple[np.ndarray, int]:
    """Which of the forest's pool rerank gives an exact cosine, and the pool's size: the numpy path, whose choice
    the compiled one (``compiled.py``) matches row for row."""
    ids = s.widen(q, _pool(s, q, wanted), wanted)
    # the pool's best by the 128-byte projection (integer scores): at 50,000 real photos its best 1/20 held every
    # top-10 neighbour the pool did (docs/decisions.md). Where it holds too little of the variance, those whose
    # top-K dimensions share most with the query's: at 50,000 real photos keeping 800 of ~4,750 gave recall 0.970
    # against 0.973 keeping 1,600; overlap of the centroid sets (0..12 shared) is too coarse to choose by
    # (docs/quality.md, docs/decisions.md)
    by = "projected" if s.projection_keep is not None else "shared"
    return _most(ids, s.scores(by, q, ids), s.reranked(wanted)), len(ids)


def _rerank(s: Searcher, q: QueryVector, wanted: int) -> tuple[np.ndarray, np.ndarray, int]:
    answered = s.compiled_rerank(q, wanted)  # the same rows in the same order, where it is in use
    if answered is not None:
        return answered
    keep, examined = chosen(s, q, wanted)
    top, best = s.ranked(keep, s.cosine(q, keep), wanted)
    return top, best, examined


# name -> search(searcher, q, wanted); ``auto`` resolves to one of these (Searcher.resolve)
METHOD_FUNCTIONS: dict[str, Callable[[Searcher, QueryVector, int], tuple[np.ndarray, np.ndarray, int]]] = {
    "exact": _exact,
    "rerank": _rerank,
    "forest": _by_jaccard(_pool),
    "forest-query": _by_jaccard(lambda s, q, wanted: s.datasketch_candidates(q, wanted)),
}
