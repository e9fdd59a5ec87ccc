"""Stage 4: answering "which images look like this one?" over a loaded index.

Methods:
    auto          exact while the collection has at most ``SCAN_LIMIT`` images (a scan costs a few ms there and
                  is always right), rerank beyond (the default).
    forest        candidates from every tree of the LSH forest, deepest shared prefix first,
                  until the candidate budget is met; ordered by estimated Jaccard (MinHash).
    rerank        the same pool; the ``candidates`` whose top-K dimensions overlap the query's most are ordered by
                  exact cosine similarity of the stored features.
    exact         brute-force cosine similarity over all stored features (the baseline).
    forest-query  datasketch's own ``MinHashLSHForest.query(m, k)`` (stops at the first k keys it
                  meets), ordered by estimated Jaccard: kept to show what the gathering above buys.

Every method widens its search until it has ``min(k, N - 1)`` results (never fewer) and never
returns the query itself.

The seam: a :class:`Searcher` runs every method once, over *parts* (a collection's shards; an unsharded one is
one part). A :class:`Shard` answers the per-part questions (prefix ranges, the keys at a depth, scores of its
rows, its exact top, descriptions) for its own rows; :class:`LocalParts` asks its shards in this process and
``ray_engine.RayParts`` asks one Ray actor per shard. Shards' rows are disjoint, so gathering at a depth chosen
from the summed counts gives exactly the candidates one unsharded forest would: a sharded collection answers
``auto``, ``rerank``, ``forest`` and ``exact`` as one index with the same parameters (``forest-query``, the
datasketch object's own walk, is asked per shard). Every method is ``search(q, k) -> rows, scores, examined``,
registered in ``METHOD_FUNCTIONS``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from stl10_similarity.index import LoadedIndex
from stl10_similarity.index.forest import Sketch
from stl10_similarity.index.sets import bitmap_intersections, bitmaps, set_intersections, set_sizes
from stl10_similarity.index.signatures import minhash_signatures, top_k_sets
from stl10_similarity.params import POOL_FACTOR, POOL_GROWTH, POOL_GROWTH_FROM, SCAN_LIMIT, SearchParams

OVERSHOOT = 2  # a depth may bring up to this many times the pool before it is trimmed
# One exact scan at a time in a process. A scan already runs on all of BLAS's threads; concurrent ones (the
# server's worker threads) fought over them: 16 clients at 13,000 images got 114-131 requests/s without this
# lock and 233-269 with it, one client the same (docs/server.md).
_SCAN_LOCK = threading.Lock()


def _most(rows: np.ndarray, counts: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` rows with the largest integer ``counts``, ties by smaller row: one partition, no full sort."""
    if len(rows) <= keep:
        return rows
    key = counts.astype(np.int64) * (1 << 40) - rows.astype(np.int64)  # rows < 2**40: distinct keys, ties by row
    return np.sort(rows[np.argpartition(-key, keep - 1)[:keep]])


@dataclass(frozen=True)
class Match:
    """One result. ``jaccard``, ``intersection``, ``union`` and ``unique_to_*`` compare the two images' top-K
    feature dimensions (the original project's set statistics); ``set_jaccard`` compares the sets the index
    holds (``params.sets``) and ``jaccard_estimate`` is its MinHash estimate."""

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
    set_jaccard: float
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
    """A query as every method needs it: its feature, top-K dimensions, index set and signature."""

    feature: np.ndarray
    topk: np.ndarray
    sets: np.ndarray
    signature: np.ndarray
    exclude: int | None = None
    info: QueryInfo = field(default_factory=lambda: QueryInfo(None, None, None))


class Shard:
    """One index's rows, in its own row numbers: the per-part half of every method (``q.exclude`` is a row here)."""

    def __init__(self, index: LoadedIndex) -> None:
        self.index = index
        self.trees = index.tree_keys.shape[0]
        self.depth = index.signatures.shape[1] // self.trees
        self._width = 4 * self.depth
        self._representation = index.representation()

    @property
    def n(self) -> int:
        return self.index.n

    def vector(self, row: int, info: QueryInfo) -> QueryVector:
        idx = self.index
        return QueryVector(np.asarray(idx.features[row]), np.asarray(idx.topk[row]), np.asarray(idx.sets[row]),
                           np.asarray(idx.signatures[row]), row, info)

    def for_feature(self, feature: np.ndarray, image: str | None = None) -> QueryVector:
        """A query from a feature computed outside the collection, treated as the collection was."""
        p, stats = self.index.params, np.asarray(self.index.stats)
        feature = feature.astype(np.float32)
        topk = top_k_sets(feature[None, :], p["top_k"], p["basis"], stats)[0]
        sets = self._representation.sets(feature[None, :], stats, np.asarray(self.index.vocabulary))
        sig = minhash_signatures(sets, self.index.token_table, threads=1)[0]
        return QueryVector(feature, topk, sets[0], sig, None, QueryInfo(None, None, None, image))

    def ranges(self, q: QueryVector) -> np.ndarray:
        """Per tree and depth, the range of sorted keys sharing the query's prefix: ``(trees, depth + 1, 2)``.

        One ``searchsorted`` per tree finds all depths at once; row ``d`` is depth ``d`` (row 0 unused).
        """
        bands = q.signature.astype(">u4").tobytes()
        depths = range(1, self.depth + 1)
        out = np.zeros((self.trees, self.depth + 1, 2), dtype=np.int64)
        for t in range(self.trees):
            h = bands[t * self._width : (t + 1) * self._width]
            lows = [h[: 4 * d] for d in depths]
            highs = [h[: 4 * d] + b"\xff" * (self._width - 4 * d) for d in depths]
            keys = self.index.tree_keys[t]
            out[t, 1:, 0] = np.searchsorted(keys, np.array(lows, dtype=keys.dtype), "left")
            out[t, 1:, 1] = np.searchsorted(keys, np.array(highs, dtype=keys.dtype), "right")
        return out

    def union(self, q: QueryVector, ranges: np.ndarray, active: np.ndarray,
              depth: int) -> tuple[np.ndarray, np.ndarray]:
        """The distinct keys sharing the query's prefix of ``depth`` in some tree, and in how many trees."""
        pieces = [self.index.tree_order[t][ranges[t, depth, 0] : ranges[t, depth, 1]]
                  for t in np.flatnonzero(active[:, depth])]
        if not pieces:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        keys, votes = np.unique(np.concatenate(pieces), return_counts=True)
        mine = keys != q.exclude
        return keys[mine].astype(np.int64), votes[mine]

    def jaccard(self, q: QueryVector, rows: np.ndarray) -> np.ndarray:
        """Estimated Jaccard (share of equal MinHash values) of the query's set and each row's."""
        return (np.asarray(self.index.signatures[rows]) == q.signature).mean(axis=1)

    def cosine(self, q: QueryVector, rows: np.ndarray) -> np.ndarray:
        # einsum sums each row in one fixed order, so a row's cosine is the same whichever rows it is computed
        # with (BLAS picks kernels by the number of rows: the last bit moved), and shards rank as one index
        return np.einsum("ij,j->i", np.asarray(self.index.features[rows]), q.feature)

    def shared(self, q: QueryVector, rows: np.ndarray) -> np.ndarray:
        """How many top-K dimensions each row shares with the query."""
        dim = self.index.features.shape[1]
        return bitmap_intersections(bitmaps(q.topk[None, :], dim)[0], self.index.topk_bits[rows])

    def exact(self, q: QueryVector, wanted: int) -> tuple[np.ndarray, np.ndarray]:
        """This part's ``wanted`` best rows by cosine (at most), and their cosines."""
        with _SCAN_LOCK:
            scores = np.asarray(self.index.features) @ q.feature
        if q.exclude is not None:
            scores[q.exclude] = -np.inf
        top = np.argpartition(-scores, wanted - 1)[:wanted] if wanted < len(scores) else np.arange(len(scores))
        keep = top[np.isfinite(scores[top])].astype(np.int64)
        return keep, self.cosine(q, keep)  # ranked by the cosine every result shows

    def datasketch(self, q: QueryVector, k: int) -> np.ndarray:
        keys = self.index.forest.query(Sketch(q.signature), k + (q.exclude is not None))
        return np.array([key for key in keys if key != q.exclude], dtype=np.int64)

    def describe(self, q: QueryVector, rows: np.ndarray) -> list[Match]:
        """Every score a user sees for each row, in the order given (ranks from 1)."""
        idx = self.index
        est = self.jaccard(q, rows)
        cos = self.cosine(q, rows)
        dim = idx.features.shape[1]
        inters = set_intersections(q.topk, idx.topk[rows], dim)
        q_size, sizes = len(q.topk), set_sizes(idx.topk[rows], dim)
        set_inters = set_intersections(q.sets, idx.sets[rows], idx.universe)
        set_unions = set_sizes(q.sets[None, :], idx.universe)[0] + set_sizes(idx.sets[rows], idx.universe) - set_inters
        out = []
        for rank, (i, e, c, inter, size, s_inter, s_union) in enumerate(
                zip(rows, est, cos, inters, sizes, set_inters, set_unions), start=1):
            inter, union = int(inter), int(q_size + size - inter)
            ci = int(idx.labels[i])
            out.append(Match(rank=rank, id=idx.id_of(i), label=label_name(idx.class_names, ci), class_index=ci,
                             jaccard=round(inter / union, 6) if union else 1.0, jaccard_estimate=round(float(e), 6),
                             cosine=round(float(c), 6), intersection=inter, union=union,
                             unique_to_query=q_size - inter, unique_to_match=int(size) - inter,
                             set_jaccard=round(float(s_inter) / float(s_union), 6) if s_union else 1.0,
                             path=None if idx.paths is None else str(idx.paths[int(i)])))
        return out


def label_name(class_names: Sequence[str], class_index: int) -> str:
    return class_names[class_index] if 0 <= class_index < len(class_names) else "unlabeled"


class LocalParts:
    """The shards of a collection in this process: each question is asked of each part in turn."""

    def __init__(self, shards: list[Shard]) -> None:
        self.shards = shards
        self.sizes = [shard.n for shard in shards]

    def each(self, method: str, calls: list[tuple[int, tuple[Any, ...]]]) -> list[Any]:
        """``getattr(shard, method)(*args)`` for each ``(part, args)``, answers in the same order."""
        return [getattr(self.shards[part], method)(*args) for part, args in calls]


class Searcher:
    """Queries over a collection's index (a :class:`LoadedIndex`, or a sharded collection's ``ShardedIndex``);
    one instance serves many queries. ``parts``: who answers for each shard (default: this process)."""

    def __init__(self, index: Any, candidates: int = SearchParams.candidates, parts: Any = None) -> None:
        SearchParams(candidates=candidates)  # validates
        self.index = index
        self.candidates = candidates
        self.parts = parts if parts is not None else LocalParts([Shard(s) for s in getattr(index, "shards", [index])])
        self.offsets = np.cumsum([0, *self.parts.sizes])

    @property
    def pool(self) -> int:
        """How many forest keys to gather before keeping the ``candidates`` that share the most top-K dimensions
        with the query: ``POOL_FACTOR`` times the candidates, growing slowly beyond ``POOL_GROWTH_FROM`` images."""
        growth = max(1.0, self.index.n / POOL_GROWTH_FROM) ** POOL_GROWTH
        return int(round(POOL_FACTOR * self.candidates * growth))

    # ------------------------------------------------------------ query vectors

    def label_name(self, class_index: int) -> str:
        return label_name(self.index.class_names, class_index)

    def for_row(self, row: int) -> QueryVector:
        """The collection image in ``row`` as a query (``index.row_of`` finds an image id's row)."""
        ci = int(self.index.labels[row])
        info = QueryInfo(self.index.id_of(row), self.label_name(ci), ci, path=self.path(row))
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

    def _local(self, q: QueryVector) -> list[QueryVector]:
        """The query as each part sees it: ``exclude`` in the part's own rows (None in the others)."""
        out = []
        for part in range(len(self.parts.sizes)):
            lo, hi = int(self.offsets[part]), int(self.offsets[part + 1])
            inside = q.exclude is not None and lo <= q.exclude < hi
            out.append(replace(q, exclude=q.exclude - lo if inside else None))  # type: ignore[operator]
        return out

    def _global(self, per_part: list[np.ndarray]) -> np.ndarray:
        """Each part's rows (one array per part, in part order) as rows of the whole collection, joined."""
        return np.concatenate([rows + self.offsets[p] for p, rows in enumerate(per_part)]).astype(np.int64)

    def _by_part(self, method: str, q: QueryVector, rows: np.ndarray) -> list[tuple[np.ndarray, Any]]:
        """``method(q, its rows)`` asked of each part holding some of the global ``rows``: for each part, the
        positions in ``rows`` it answered for, and its answer."""
        rows = np.asarray(rows, dtype=np.int64)
        parts = np.searchsorted(self.offsets, rows, "right") - 1
        local, calls, where = self._local(q), [], []
        for part in np.unique(parts).tolist():
            mine = np.flatnonzero(parts == part)
            calls.append((part, (local[part], rows[mine] - self.offsets[part])))
            where.append(mine)
        return list(zip(where, self.parts.each(method, calls)))

    def _scores(self, method: str, q: QueryVector, rows: np.ndarray) -> np.ndarray:
        """A per-row score (``jaccard``, ``cosine``, ``shared``) of global ``rows``, each asked of its part."""
        out = np.empty(len(rows), dtype=np.float64)
        for mine, scores in self._by_part(method, q, rows):
            out[mine] = scores
        return out

    # ------------------------------------------------------------ candidates

    def _wanted(self, k: int, q: QueryVector) -> int:
        return min(k, self.index.n - (q.exclude is not None))

    def forest_candidates(self, q: QueryVector, budget: int) -> np.ndarray:
        """Keys sharing the deepest prefixes with the query, from every tree (of every part), until ``budget``
        are found.

        Unlike ``MinHashLSHForest.query``, each depth is taken across all trees, so which keys are kept
        doesn't depend on tree order; ordering is left to the caller. Depths where a tree holds nothing
        but the query itself are skipped without work. When the last depth brings more than
        ``OVERSHOOT`` times the budget, its new keys are kept by how many trees they matched in.
        """
        local = self._local(q)
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
            keys = self._global([k for k, _ in found])  # parts' rows ascend: still sorted, distinct
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
            return np.sort(keys).astype(np.int64)
        return np.empty(0, dtype=np.int64)

    def datasketch_candidates(self, q: QueryVector, k: int) -> np.ndarray:
        local = self._local(q)
        found = self.parts.each("datasketch", [(p, (local[p], k)) for p in range(len(local))])
        return self._global(found)

    # ------------------------------------------------------------ ranking

    def estimated_jaccard(self, q: QueryVector, ids: np.ndarray) -> np.ndarray:
        return self._scores("jaccard", q, ids)

    def cosine(self, q: QueryVector, ids: np.ndarray) -> np.ndarray:
        return self._scores("cosine", q, ids)

    def top(self, ids: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` rows of ``ids`` with the best ``scores``, best first, ties by row (how every method ranks)."""
        return self._ranked(ids, scores, k)[0]

    def _ranked(self, ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.lexsort((ids, -scores))[:k]  # best score first, ties by row
        return ids[order], scores[order]

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

    def search(self, q: QueryVector, k: int, method: str) -> tuple[np.ndarray, np.ndarray, int]:
        """The contract every method keeps: the rows of the top ``k`` results, best first, their scores (the
        method's own: cosine, or estimated Jaccard for forest and forest-query) and how many were examined."""
        method = self.resolve(method)
        if method not in METHOD_FUNCTIONS:
            SearchParams(method=method)  # raises: not a method
        return METHOD_FUNCTIONS[method](self, q, self._wanted(k, q))

    def search_ids(self, q: QueryVector, k: int, method: str) -> tuple[np.ndarray, int]:
        """The rows of the top ``k`` results and how many candidates were examined."""
        rows, _, examined = self.search(q, k, method)
        return rows, examined

    def query(self, q: QueryVector, k: int, method: str = SearchParams.method) -> QueryResult:
        t0 = time.perf_counter()
        ids, examined = self.search_ids(q, k, method)
        t1 = time.perf_counter()
        matches = self.describe(q, ids)
        t2 = time.perf_counter()
        return QueryResult(
            query=q.info,
            results=matches,
            params={"method": method, "answered_by": self.resolve(method), "k": k, "candidates": self.candidates,
                    **self.index.params,
                    "weights": self.index.features_params.get("weights"), "split": self.index.features_params.get("split"),
                    "n": self.index.n},
            timing_ms={"search": round((t1 - t0) * 1e3, 3), "describe": round((t2 - t1) * 1e3, 3)},
            candidates=examined,
        )

    def describe(self, q: QueryVector, ids: np.ndarray) -> list[Match]:
        """Every score a user sees for each result, in rank order (each part describes its own rows)."""
        out: list[Match | None] = [None] * len(ids)
        for mine, matches in self._by_part("describe", q, ids):
            for position, match in zip(mine.tolist(), matches):
                out[position] = replace(match, rank=position + 1)
        return out  # type: ignore[return-value]


# ---------------------------------------------------------------- the methods: search(q, wanted) -> rows, scores, examined


def _exact(s: Searcher, q: QueryVector, wanted: int) -> tuple[np.ndarray, np.ndarray, int]:
    local = s._local(q)
    found = s.parts.each("exact", [(p, (local[p], wanted)) for p in range(len(local))])
    rows = s._global([r for r, _ in found])
    scores = np.concatenate([sc for _, sc in found])
    top, best = s._ranked(rows, scores, wanted)
    return top, best, s.index.n


def _by_jaccard(gather: Callable[[Searcher, QueryVector, int], np.ndarray]) -> Callable[..., Any]:
    def method(s: Searcher, q: QueryVector, wanted: int) -> tuple[np.ndarray, np.ndarray, int]:
        ids = s._widen(q, gather(s, q, wanted), wanted)
        top, best = s._ranked(ids, s.estimated_jaccard(q, ids), wanted)
        return top, best, len(ids)
    return method


def _pool(s: Searcher, q: QueryVector, wanted: int) -> np.ndarray:
    return s.forest_candidates(q, max(s.pool, s.candidates, wanted))


def _rerank(s: Searcher, q: QueryVector, wanted: int) -> tuple[np.ndarray, np.ndarray, int]:
    ids = s._widen(q, _pool(s, q, wanted), wanted)
    # the pool is larger than the budget: keep the candidates whose top-K dimensions share most with the
    # query's, then order those by cosine. At 50,000 real photos keeping 800 of ~4,750 gave recall 0.970
    # against 0.973 keeping 1,600; overlap of the centroid sets (0..12 shared) is too coarse to choose by
    # (docs/quality.md, docs/decisions.md)
    keep = _most(ids, s._scores("shared", q, ids).astype(np.int64), max(s.candidates, wanted))
    top, best = s._ranked(keep, s.cosine(q, keep), wanted)
    return top, best, len(ids)


# name -> search(searcher, q, wanted); ``auto`` resolves to one of these (Searcher.resolve)
METHOD_FUNCTIONS: dict[str, Callable[[Searcher, QueryVector, int], tuple[np.ndarray, np.ndarray, int]]] = {
    "exact": _exact,
    "rerank": _rerank,
    "forest": _by_jaccard(_pool),
    "forest-query": _by_jaccard(lambda s, q, wanted: s.datasketch_candidates(q, wanted)),
}
