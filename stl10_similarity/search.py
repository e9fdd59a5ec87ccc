"""Stage 4: answering "which images look like this one?" over a loaded index.

Methods:
    auto          exact while the collection has at most ``SCAN_LIMIT`` images (a scan costs a few ms there and
                  is always right), rerank beyond (the default).
    forest        candidates from every tree of the LSH forest, deepest shared prefix first,
                  until the candidate budget is met; ordered by estimated Jaccard (MinHash).
    rerank        the same pool; the ``candidates`` whose stored sets overlap the query's most are ordered by
                  exact cosine similarity of the stored features.
    exact         brute-force cosine similarity over all stored features (the baseline).
    forest-query  datasketch's own ``MinHashLSHForest.query(m, k)`` (stops at the first k keys it
                  meets), ordered by estimated Jaccard: kept to show what the gathering above buys.

Every method widens its search until it has ``min(k, N - 1)`` results (never fewer) and never
returns the query itself.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .forest import Sketch
from .index import LoadedIndex
from .params import POOL_FACTOR, SCAN_LIMIT, SearchParams
from .signatures import minhash_signatures, set_intersections, top_k_sets

OVERSHOOT = 2  # a depth may bring up to this many times the pool before it is trimmed
# One exact scan at a time in a process. A scan already runs on all of BLAS's threads; concurrent ones (the
# server's worker threads) fought over them: 16 clients at 13,000 images got 114-131 requests/s without this
# lock and 233-269 with it, one client the same (docs/server.md).
_SCAN_LOCK = threading.Lock()


@dataclass(frozen=True)
class Match:
    rank: int
    id: int
    label: str
    class_index: int
    jaccard: float
    jaccard_estimate: float
    cosine: float
    intersection: int
    union: int
    unique_to_query: int
    unique_to_match: int
    path: str | None = None  # relative to the folder, for folder collections


@dataclass(frozen=True)
class QueryInfo:
    id: int | None
    label: str | None
    class_index: int | None
    image: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class QueryResult:
    query: QueryInfo
    results: list[Match]
    params: dict[str, Any]
    timing_ms: dict[str, float]
    candidates: int = 0
    # the query's pixels when it was an image of the user's (for grids); never serialised
    query_image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        query = {k: v for k, v in asdict(self.query).items() if k not in ("image", "path") or v is not None}
        return {
            "query": query,
            "results": [{k: v for k, v in asdict(m).items() if k != "path" or v is not None} for m in self.results],
            "params": self.params,
            "timing_ms": self.timing_ms,
            "candidates": self.candidates,
        }


@dataclass
class QueryVector:
    """A query as every method needs it: its feature, set and signature."""

    feature: np.ndarray
    topk: np.ndarray
    signature: np.ndarray
    exclude: int | None = None
    info: QueryInfo = field(default_factory=lambda: QueryInfo(None, None, None))


class Searcher:
    """Queries over a :class:`LoadedIndex`; one instance serves many queries."""

    def __init__(self, index: LoadedIndex, candidates: int = SearchParams.candidates) -> None:
        SearchParams(candidates=candidates)  # validates
        self.index = index
        self.candidates = candidates
        self._trees = index.tree_keys.shape[0]
        self._depth = index.signatures.shape[1] // self._trees
        self._width = 4 * self._depth

    @property
    def pool(self) -> int:
        """How many forest keys to gather before picking the ``candidates`` best estimates."""
        return POOL_FACTOR * self.candidates

    # ------------------------------------------------------------ query vectors

    def label_name(self, class_index: int) -> str:
        names = self.index.class_names
        return names[class_index] if 0 <= class_index < len(names) else "unlabeled"

    def for_row(self, row: int) -> QueryVector:
        """The collection image in ``row`` as a query (``index.row_of`` finds an image id's row)."""
        idx = self.index
        ci = int(idx.labels[row])
        info = QueryInfo(idx.id_of(row), self.label_name(ci), ci, path=self.path(row))
        return QueryVector(np.asarray(idx.features[row]), np.asarray(idx.topk[row]),
                           np.asarray(idx.signatures[row]), row, info)

    def path(self, row: int) -> str | None:
        """An image's path relative to its folder (folder collections only)."""
        return None if self.index.paths is None else str(self.index.paths[row])

    def for_feature(self, feature: np.ndarray, image: str | None = None) -> QueryVector:
        """A query from a feature computed outside the collection, treated as the collection was."""
        p = self.index.params
        topk = top_k_sets(feature[None, :], p["top_k"], p["basis"], np.asarray(self.index.stats))[0]
        sig = minhash_signatures(topk[None, :], self.index.table, threads=1)[0]
        return QueryVector(feature.astype(np.float32), topk, sig, None, QueryInfo(None, None, None, image))

    # ------------------------------------------------------------ candidates

    def _wanted(self, k: int, q: QueryVector) -> int:
        return min(k, self.index.n - (q.exclude is not None))

    def _ranges(self, q: QueryVector) -> np.ndarray:
        """Per tree and depth, the range of sorted keys sharing the query's prefix: ``(trees, depth + 1, 2)``.

        One ``searchsorted`` per tree finds all depths at once; row ``d`` is depth ``d`` (row 0 unused).
        """
        bands = q.signature.astype(">u4").tobytes()
        depths = range(1, self._depth + 1)
        out = np.zeros((self._trees, self._depth + 1, 2), dtype=np.int64)
        for t in range(self._trees):
            h = bands[t * self._width : (t + 1) * self._width]
            lows = [h[: 4 * d] for d in depths]
            highs = [h[: 4 * d] + b"\xff" * (self._width - 4 * d) for d in depths]
            keys = self.index.tree_keys[t]
            out[t, 1:, 0] = np.searchsorted(keys, np.array(lows, dtype=keys.dtype), "left")
            out[t, 1:, 1] = np.searchsorted(keys, np.array(highs, dtype=keys.dtype), "right")
        return out

    def forest_candidates(self, q: QueryVector, budget: int) -> np.ndarray:
        """Keys sharing the deepest prefixes with the query, from every tree, until ``budget`` are found.

        Unlike ``MinHashLSHForest.query``, each depth is taken across all trees, so which keys are kept
        doesn't depend on tree order; ordering is left to the caller. Depths where a tree holds nothing
        but the query itself are skipped without work. When the last depth brings more than
        ``OVERSHOOT`` times the budget, its new keys are kept by how many trees they matched in.
        """
        ranges = self._ranges(q)
        own = 1 if q.exclude is not None else 0  # an indexed query matches its own band at every depth
        sizes = ranges[:, :, 1] - ranges[:, :, 0] - own
        sizes[:, 0] = 0
        active = sizes > 0
        if not active.any():
            return np.empty(0, dtype=np.int64)
        top = int(np.flatnonzero(active.any(axis=0)).max())
        kept = np.empty(0, dtype=np.int64)  # keys from the depths fully taken so far
        for depth in range(top, 0, -1):
            pieces = [kept]
            for t in np.flatnonzero(active[:, depth]):
                lo, hi = ranges[t, depth]
                pieces.append(self.index.tree_order[t][lo:hi])
            keys, votes = np.unique(np.concatenate(pieces), return_counts=True)
            keys, votes = keys[keys != q.exclude], votes[keys != q.exclude]
            if len(keys) < budget and depth > 1:
                kept = keys.astype(np.int64)
                continue
            if len(keys) > OVERSHOOT * budget:
                # this depth adds far more than the budget (shallow prefixes are shared widely): keep the
                # keys found in the most trees (deeper keys appear in every tree where they matched deeper)
                fresh = ~np.isin(keys, kept, assume_unique=True)
                order = np.lexsort((keys[fresh], -votes[fresh]))
                keys = np.concatenate([kept, keys[fresh][order[: max(budget - len(kept), 0)]]])
            return np.sort(keys).astype(np.int64)
        return kept

    def datasketch_candidates(self, q: QueryVector, k: int) -> np.ndarray:
        keys = self.index.forest.query(Sketch(q.signature), k + (q.exclude is not None))
        return np.array([key for key in keys if key != q.exclude], dtype=np.int64)

    # ------------------------------------------------------------ ranking

    def estimated_jaccard(self, q: QueryVector, ids: np.ndarray) -> np.ndarray:
        return (np.asarray(self.index.signatures[ids]) == q.signature).mean(axis=1)

    def cosine(self, q: QueryVector, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.features[ids]) @ q.feature

    def _top(self, ids: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
        order = np.lexsort((ids, -scores))  # best score first, ties by id
        return ids[order[:k]]

    def _widen(self, q: QueryVector, ids: np.ndarray, wanted: int) -> np.ndarray:
        """Never silently fewer: add the rest of the collection when the forest ran dry."""
        if len(ids) >= wanted:
            return ids
        rest = np.setdiff1d(np.arange(self.index.n), ids, assume_unique=False)
        if q.exclude is not None:
            rest = rest[rest != q.exclude]
        return np.concatenate([ids, rest])

    def resolve(self, method: str) -> str:
        """The method that answers: ``auto`` becomes ``exact`` or ``rerank`` by the collection's size."""
        if method == "auto":
            return "exact" if self.index.n <= SCAN_LIMIT else "rerank"
        return method

    def search_ids(self, q: QueryVector, k: int, method: str) -> tuple[np.ndarray, int]:
        """The rows of the top ``k`` results and how many candidates were examined."""
        wanted = self._wanted(k, q)
        method = self.resolve(method)
        if method == "exact":
            with _SCAN_LOCK:
                scores = np.asarray(self.index.features) @ q.feature
            if q.exclude is not None:
                scores[q.exclude] = -np.inf
            top = np.argpartition(-scores, wanted - 1)[:wanted] if wanted < len(scores) else np.arange(len(scores))
            keep = top[np.isfinite(scores[top])]
            return self._top(keep, scores[keep], wanted), self.index.n
        if method == "forest-query":
            ids = self.datasketch_candidates(q, wanted)
        elif method in ("forest", "rerank"):
            ids = self.forest_candidates(q, max(self.pool, self.candidates, wanted))
        else:
            SearchParams(method=method)  # raises: not a method
            raise AssertionError(method)
        ids = self._widen(q, ids, wanted)
        if method != "rerank":
            return self._top(ids, self.estimated_jaccard(q, ids), wanted), len(ids)
        # the pool is larger than the budget: keep the candidates whose sets share most with the query's (exact
        # overlap of the stored sets: recall 0.02-0.09 higher than keeping the best MinHash estimates, as fast)
        shared = set_intersections(q.topk, self.index.topk[ids], self.index.features.shape[1])
        keep = self._top(ids, shared.astype(np.float64), max(self.candidates, wanted))
        return self._top(keep, self.cosine(q, keep), wanted), len(ids)

    def query(self, q: QueryVector, k: int, method: str = SearchParams.method) -> QueryResult:
        t0 = time.perf_counter()
        ids, examined = self.search_ids(q, k, method)
        t1 = time.perf_counter()
        matches = self.describe(q, ids)
        t2 = time.perf_counter()
        return QueryResult(
            query=q.info,
            results=matches,
            params={"method": method, "answered_by": self.resolve(method), "k": k, "candidates": self.candidates, **self.index.params,
                    "weights": self.index.features_params.get("weights"), "split": self.index.features_params.get("split"),
                    "n": self.index.n},
            timing_ms={"search": round((t1 - t0) * 1e3, 3), "describe": round((t2 - t1) * 1e3, 3)},
            candidates=examined,
        )

    def describe(self, q: QueryVector, ids: np.ndarray) -> list[Match]:
        """Every score a user sees for each result, in rank order."""
        est = self.estimated_jaccard(q, ids)
        cos = self.cosine(q, ids)
        inters = set_intersections(q.topk, self.index.topk[ids], self.index.features.shape[1])
        k = len(q.topk)
        out = []
        for rank, (i, e, c, inter) in enumerate(zip(ids, est, cos, inters), start=1):
            inter = int(inter)
            union = 2 * k - inter
            ci = int(self.index.labels[i])
            out.append(Match(rank=rank, id=self.index.id_of(i), label=self.label_name(ci), class_index=ci,
                             jaccard=round(inter / union, 6), jaccard_estimate=round(float(e), 6),
                             cosine=round(float(c), 6), intersection=inter, union=union,
                             unique_to_query=k - inter, unique_to_match=k - inter, path=self.path(int(i))))
        return out
