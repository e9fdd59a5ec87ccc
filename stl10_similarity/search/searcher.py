"""The :class:`Searcher`: every method once, over a collection's parts (one per shard; an unsharded collection is
one part), with the helpers the methods (``methods.py``) are written in."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cached_property
from typing import Any, TypeVar

import numpy as np

from stl10_similarity.params import (
    COMPILED_BATCH,
    POOL_FACTOR,
    POOL_GROWTH,
    POOL_GROWTH_FROM,
    PROJECTION_KEEP,
    SCAN_LIMIT,
    SearchParams,
    usable_cores,
)
from stl10_similarity.search import compiled
from stl10_similarity.search.results import Match, QueryInfo, QueryResult, label_name
from stl10_similarity.search.shard import LocalParts, Parts, QueryVector, Shard

OVERSHOOT = 2  # a depth may bring up to this many times the pool before it is trimmed
T = TypeVar("T")
BLOCK = 64  # queries per compiled call in a batch: few Python steps, and blocks enough to share among threads


def query_threads(threads: int | None = None) -> int:
    """How many threads answer a batch of queries: ``threads``, or every core this process may run on."""
    if threads is not None:
        SearchParams(threads=threads)  # validates
        return threads
    return usable_cores()


class Searcher:
    """Queries over a collection's index (a :class:`LoadedIndex`, or a sharded collection's ``ShardedIndex``);
    one instance serves many queries. ``parts``: who answers for each shard (default: this process)."""

    def __init__(self, index: Any, candidates: int = SearchParams.candidates, parts: Parts | None = None,
                 compiled: bool | None = None) -> None:
        SearchParams(candidates=candidates)  # validates
        self.index = index
        self.candidates = candidates
        self.parts = parts if parts is not None else LocalParts([Shard(s) for s in getattr(index, "shards", [index])])
        self.offsets = np.cumsum([0, *self.parts.sizes])
        self.compiled = compiled
        self._kernels: Any = None  # the compiled functions, once this searcher uses them

    # ------------------------------------------------------------ the compiled rerank

    def prepare(self) -> bool:
        """Load the compiled rerank (``compiled.py``) for this process where this searcher can use it, so the next
        queries do: what a process that answers many queries does first. Whether it is in use."""
        if self.compilable:
            compiled.load()
        return self.uses_compiled

    @cached_property
    def compilable(self) -> bool:
        """Whether rerank could run compiled here: not told otherwise (``compiled=False``, ``DISABLE_ENV``), one
        part in this process, and band codes."""
        return self.compiled is not False and not compiled.disabled() and isinstance(self.parts, LocalParts) \
            and len(self.parts.shards) == 1 and self.parts.shards[0].compiled_arrays is not None

    @property
    def uses_compiled(self) -> bool:
        """Whether rerank runs compiled: :attr:`compilable`, and the compiled functions loaded (by :meth:`prepare`,
        or by any searcher of this process) or asked for (``compiled=True``)."""
        if self._kernels is None and self.compilable and (self.compiled or compiled.loaded()):
            self._kernels = compiled.load()  # kept for this searcher's life: no lock or environment per query
        return self._kernels is not None

    def _compiled_arrays(self) -> compiled.Arrays:
        arrays = self.parts.shards[0].compiled_arrays  # type: ignore[attr-defined]
        assert arrays is not None
        return arrays

    def budget(self, wanted: int) -> int:
        """How many keys rerank's pool gathers from the forest."""
        return max(self.pool, self.candidates, wanted)

    def compiled_rerank(self, q: QueryVector, wanted: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """rerank's answer (rows, cosines, the pool's size) from the compiled path, or None where the numpy path
        answers (not in use, or a pool too small to fill ``wanted``: widened there)."""
        if not self.uses_compiled:
            return None
        top, best, pool = self._compiled_arrays().rerank(
            self._kernels, q.signature, -1 if q.exclude is None else int(q.exclude), q.feature, q.topk,
            self.budget(wanted), OVERSHOOT, self.reranked(wanted), wanted, self.projection_keep is not None)
        return (top, best, pool) if pool >= wanted else None

    def _compiled_many(self, queries: Sequence[QueryVector], k: int,
                       threads: int | None) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """rerank for every query, blocks of ``BLOCK`` queries per compiled call on ``threads`` threads: no Python
        between one query and the next."""
        arrays, kernels = self._compiled_arrays(), self._kernels
        by_projection = self.projection_keep is not None
        out: list[Any] = [None] * len(queries)
        wants = [self._wanted(k, q) for q in queries]
        blocks = []
        for wanted in sorted(set(wants)):  # the kernel takes one ``wanted`` a call
            mine = [i for i, w in enumerate(wants) if w == wanted]
            blocks += [(wanted, mine[lo : lo + BLOCK]) for lo in range(0, len(mine), BLOCK)]

        def answer(block: tuple[int, list[int]]) -> None:
            wanted, positions = block
            chosen = [queries[i] for i in positions]
            rows, cosines, pools = arrays.rerank_many(
                kernels, np.stack([q.signature for q in chosen]),
                np.array([-1 if q.exclude is None else q.exclude for q in chosen]),
                np.stack([q.feature for q in chosen]), np.stack([q.topk for q in chosen]), self.budget(wanted),
                OVERSHOOT, self.reranked(wanted), wanted, by_projection)
            for i, q, r, c, pool in zip(positions, chosen, rows, cosines, pools.tolist()):
                # a pool too small to fill ``wanted`` is widened by the numpy path
                out[i] = (r[:wanted], c[:wanted], pool) if pool >= wanted else self.search(q, k, "rerank")

        self._each(answer, blocks, threads)
        return out

    @property
    def pool(self) -> int:
        """How many forest keys to gather before rerank keeps the few that get an exact cosine (``reranked``):
        ``POOL_FACTOR`` times the candidates, growing slowly beyond ``POOL_GROWTH_FROM`` images."""
        growth = max(1.0, self.index.n / POOL_GROWTH_FROM) ** POOL_GROWTH
        return int(round(POOL_FACTOR * self.candidates * growth))

    @cached_property
    def projection_keep(self) -> float | None:
        """Which share of the pool rerank gives an exact cosine, chosen by the projection (``PROJECTION_KEEP``:
        by how much of the variance its directions hold), or None: too little, choose by shared top-K dimensions."""
        share = float(self.parts.each("projection_share", [(0, ())])[0])  # every shard holds the same projection
        return next((keep for least, keep in sorted(PROJECTION_KEEP.items(), reverse=True) if share >= least), None)

    def reranked(self, wanted: int) -> int:
        """How many of the pool rerank orders by exact cosine."""
        keep = self.projection_keep
        count = self.candidates if keep is None else int(np.ceil(keep * max(self.pool, self.candidates)))
        return max(count, wanted)

    # ------------------------------------------------------------ query vectors

    def label_name(self, class_index: int) -> str:
        return label_name(self.index.class_names, class_index)

    def for_row(self, row: int) -> QueryVector:
        """The collection image in ``row`` as a query (``index.row_of`` finds an image id's row)."""
        ci = int(self.index.labels[row])
        info = QueryInfo(self.index.id_of(row), self.label_name(ci), ci, path=self.path(row))
        if len(self.offsets) == 2:  # one part: its rows are the collection's, and so is ``exclude``
            return self.parts.each("vector", [(0, (row, info))])[0]
        part = self._part_of(row)
        q = self.parts.each("vector", [(part, (row - int(self.offsets[part]), info))])[0]
        return replace(q, exclude=row)

    def path(self, row: int) -> str | None:
        """An image's path relative to its folder (folder collections only)."""
        return None if self.index.paths is None else str(self.index.paths[row])

    def for_feature(self, feature: np.ndarray, image: str | None = None) -> QueryVector:
        """A query from a feature computed outside the collection (every shard forms sets alike: the first does)."""
        return self.parts.each("for_feature", [(0, (feature, image))])[0]

    # ------------------------------------------------------------ parts

    def _part_of(self, row: int) -> int:
        return int(np.searchsorted(self.offsets, row, "right") - 1)

    def local(self, q: QueryVector) -> list[QueryVector]:
        """The query as each part sees it: ``exclude`` in the part's own rows (None in the others)."""
        if len(self.parts.sizes) == 1:
            return [q]  # one part: its rows are the collection's
        out = []
        for part in range(len(self.parts.sizes)):
            lo, hi = int(self.offsets[part]), int(self.offsets[part + 1])
            inside = q.exclude is not None and lo <= q.exclude < hi
            out.append(replace(q, exclude=q.exclude - lo if inside else None))  # type: ignore[operator]
        return out

    def joined(self, per_part: list[np.ndarray]) -> np.ndarray:
        """Each part's rows (one array per part, in part order) as rows of the whole collection, joined."""
        return np.concatenate([rows + self.offsets[p] for p, rows in enumerate(per_part)]).astype(np.int64)

    def by_part(self, method: str, q: QueryVector, rows: np.ndarray) -> list[tuple[np.ndarray, Any]]:
        """``method(q, its rows)`` asked of each part holding some of the global ``rows``: for each part, the
        positions in ``rows`` it answered for, and its answer."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.parts.sizes) == 1:  # nothing to split or renumber
            return [(np.arange(len(rows)), self.parts.each(method, [(0, (q, rows))])[0])]
        parts = np.searchsorted(self.offsets, rows, "right") - 1
        local, calls, where = self.local(q), [], []
        for part in np.unique(parts).tolist():
            mine = np.flatnonzero(parts == part)
            calls.append((part, (local[part], rows[mine] - self.offsets[part])))
            where.append(mine)
        return list(zip(where, self.parts.each(method, calls)))

    def scores(self, method: str, q: QueryVector, rows: np.ndarray) -> np.ndarray:
        """A per-row score (``jaccard``, ``cosine``, ``shared``) of global ``rows``, each asked of its part."""
        out = np.empty(len(rows), dtype=np.float64)
        for mine, scores in self.by_part(method, q, rows):
            out[mine] = scores
        return out

    # ------------------------------------------------------------ candidates

    def _wanted(self, k: int, q: QueryVector) -> int:
        return min(k, self.index.n - (q.exclude is not None))

    def forest_candidates(self, q: QueryVector, budget: int) -> np.ndarray:
        """Keys sharing the deepest prefixes with the query, from every tree (of every part), until ``budget``
        are found (distinct, in no particular order).

        Unlike ``MinHashLSHForest.query``, each depth is taken across all trees, so which keys are kept
        doesn't depend on tree order; ordering is left to the caller. Depths where a tree holds nothing
        but the query itself are skipped without work. When the last depth brings more than
        ``OVERSHOOT`` times the budget, its new keys are kept by how many trees they matched in.
        """
        local = self.local(q)
        count = len(local)
        ranges = self.parts.each("ranges", [(p, (local[p],)) for p in range(count)])
        # an indexed query matches its own band at every depth of its own part
        sizes = [r[:, :, 1] - r[:, :, 0] - (1 if local[p].exclude is not None else 0) for p, r in enumerate(ranges)]
        for size in sizes:
            size[:, 0] = 0
        active = [size > 0 for size in sizes]
        if not any(a.any() for a in active):
            return np.empty(0, dtype=np.int64)
        depth_max = ranges[0].shape[1] - 1

        def union(depth: int) -> tuple[np.ndarray, np.ndarray]:
            found = self.parts.each("union", [(p, (local[p], ranges[p], active[p], depth)) for p in range(count)])
            keys = self.joined([k for k, _ in found])  # parts' rows are disjoint: still distinct
            return keys, np.concatenate([v for _, v in found])

        # a tree's keys at one depth include its keys at every deeper depth, so the union at a depth whose
        # ranges add up to less than the budget cannot reach it: start at the deepest depth whose ranges can
        reach = np.flatnonzero(sum(size.sum(axis=0) for size in sizes) >= budget)
        start = int(reach.max()) if len(reach) else 1
        for depth in range(start, 0, -1):
            keys, votes = union(depth)
            if len(keys) < budget and depth > 1:
                continue
            if len(keys) > OVERSHOOT * budget:
                # this depth adds far more than the budget (shallow prefixes are shared widely): keep every key
                # of the depth below, then this depth's new keys found in the most trees
                kept = union(depth + 1)[0] if depth < depth_max else keys[:0]
                fresh = ~np.isin(keys, kept, assume_unique=True)
                order = np.lexsort((keys[fresh], -votes[fresh]))
                keys = np.concatenate([kept, keys[fresh][order[: max(budget - len(kept), 0)]]])
            return keys.astype(np.int64)  # in no particular order: every ranking breaks ties by row
        return np.empty(0, dtype=np.int64)

    def datasketch_candidates(self, q: QueryVector, k: int) -> np.ndarray:
        local = self.local(q)
        found = self.parts.each("datasketch", [(p, (local[p], k)) for p in range(len(local))])
        return self.joined(found)

    # ------------------------------------------------------------ ranking

    def estimated_jaccard(self, q: QueryVector, ids: np.ndarray) -> np.ndarray:
        return self.scores("jaccard", q, ids)

    def cosine(self, q: QueryVector, ids: np.ndarray) -> np.ndarray:
        return self.scores("cosine", q, ids)

    def top(self, ids: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` rows of ``ids`` with the best ``scores``, best first, ties by row (how every method ranks)."""
        return self.ranked(ids, scores, k)[0]

    def ranked(self, ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.lexsort((ids, -scores))[:k]  # best score first, ties by row
        return ids[order], scores[order]

    def widen(self, q: QueryVector, ids: np.ndarray, wanted: int) -> np.ndarray:
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

    def search(self, q: QueryVector, k: int, method: str) -> tuple[np.ndarray, np.ndarray, int]:
        """The contract every method keeps: the rows of the top ``k`` results, best first, their scores (the
        method's own: cosine, or estimated Jaccard for forest and forest-query) and how many were examined."""
        method = self.resolve(method)
        from stl10_similarity.search.methods import METHOD_FUNCTIONS

        if method not in METHOD_FUNCTIONS:
            SearchParams(method=method)  # raises: not a method
        return METHOD_FUNCTIONS[method](self, q, self._wanted(k, q))

    def search_ids(self, q: QueryVector, k: int, method: str) -> tuple[np.ndarray, int]:
        """The rows of the top ``k`` results and how many candidates were examined."""
        rows, _, examined = self.search(q, k, method)
        return rows, examined

    def search_many(self, queries: Sequence[QueryVector], k: int, method: str,
                    threads: int | None = None) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """:meth:`search` for every query, answered on ``threads`` threads (default: every core this process may
        use), in the queries' order. A rerank batch of ``COMPILED_BATCH`` or more loads the compiled rerank first
        (``compiled.py``), which answers blocks of queries without the GIL."""
        if len(queries) > 1 and self.resolve(method) == "rerank":
            if len(queries) >= COMPILED_BATCH:
                self.prepare()
            if self.uses_compiled:
                return self._compiled_many(queries, k, threads)
        return self._each(lambda q: self.search(q, k, method), queries, threads)

    def query_many(self, queries: Sequence[QueryVector], k: int, method: str = SearchParams.method,
                   threads: int | None = None) -> list[QueryResult]:
        """:meth:`query` for every query, in the queries' order: searched as one batch (:meth:`search_many`; each
        result's ``timing_ms.search`` is its share of the batch's time), then described."""
        t0 = time.perf_counter()
        found = self.search_many(queries, k, method, threads)
        share = (time.perf_counter() - t0) / max(len(queries), 1)
        return [self._result(q, k, method, rows, examined, share) for q, (rows, _, examined) in zip(queries, found)]

    @staticmethod
    def _each(answer: Callable[[T], Any], queries: Sequence[T], threads: int | None) -> list[Any]:
        threads = query_threads(threads)
        if threads == 1 or len(queries) < 2:
            return [answer(q) for q in queries]
        with ThreadPoolExecutor(min(threads, len(queries))) as pool:
            return list(pool.map(answer, queries))  # list() re-raises a query's exception here

    def query(self, q: QueryVector, k: int, method: str = SearchParams.method) -> QueryResult:
        t0 = time.perf_counter()
        ids, examined = self.search_ids(q, k, method)
        return self._result(q, k, method, ids, examined, time.perf_counter() - t0)

    def _result(self, q: QueryVector, k: int, method: str, ids: np.ndarray, examined: int,
                search_seconds: float) -> QueryResult:
        t1 = time.perf_counter()
        matches = self.describe(q, ids)
        t2 = time.perf_counter()
        answered_by = self.resolve(method)
        how: dict[str, Any] = {}
        if answered_by == "rerank":  # which of the pool got an exact cosine: how many, chosen by what
            how = {"prefilter": "top-k overlap" if self.projection_keep is None else "projection",
                   "reranked": min(self.reranked(k), examined)}
        return QueryResult(
            query=q.info,
            results=matches,
            params={"method": method, "answered_by": answered_by, "k": k, "candidates": self.candidates, **how,
                    **self.index.params,
                    "weights": self.index.features_params.get("weights"), "split": self.index.features_params.get("split"),
                    "n": self.index.n},
            timing_ms={"search": round(search_seconds * 1e3, 3), "describe": round((t2 - t1) * 1e3, 3)},
            candidates=examined,
        )

    def describe(self, q: QueryVector, ids: np.ndarray) -> list[Match]:
        """Every score a user sees for each result, in rank order (each part describes its own rows)."""
        out: list[Match | None] = [None] * len(ids)
        for mine, matches in self.by_part("describe", q, ids):
            for position, match in zip(mine.tolist(), matches):
                out[position] = replace(match, rank=position + 1)
        return out  # type: ignore[return-value]
