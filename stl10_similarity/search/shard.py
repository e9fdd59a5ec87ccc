"""One part of a collection's index answering for its own rows: the per-part half of every method.

The query path is a handful of vectorised calls per part: one ``searchsorted`` for every tree and depth
(:class:`~stl10_similarity.index.forest.BandCodes`), a union of the matching tree ranges that finds distinct rows
without sorting (a scratch array per thread, reused across queries), a 128-byte projection of each candidate
(or a popcount over its top-K bitmap), and the cosine of the kept few. Indexes whose bands are byte strings
(built before the codes, or too wide for 63 bits) take one ``searchsorted`` per tree: the same ranges.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from stl10_similarity.index import LoadedIndex
from stl10_similarity.index.forest import BandCodes, Sketch
from stl10_similarity.index.projection import Projection
from stl10_similarity.index.sets import bitmap_intersections, bitmaps, set_intersections, set_sizes
from stl10_similarity.index.signatures import minhash_signatures, top_k_sets
from stl10_similarity.search import compiled
from stl10_similarity.search.results import Match, QueryInfo, label_name

# One exact scan at a time in a process. A scan already runs on all of BLAS's threads; concurrent ones (the
# server's worker threads) fought over them: 16 clients at 13,000 images got 114-131 requests/s without this
# lock and 233-269 with it, one client the same (docs/server.md).
_SCAN_LOCK = threading.Lock()


def rows_of(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` for a 2-D array: ``np.take`` copies whole rows where fancy indexing goes element by element
    (at 50,000 real photos, 4,700 projection rows: 0.03 against 0.08-0.09 ms; docs/decisions.md)."""
    return np.asarray(np.take(array, rows, axis=0))


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
        self._codes = BandCodes(np.asarray(index.token_table), self.trees) \
            if index.tree_keys.dtype == np.uint64 else None
        # the trees end to end (views): codes are one sorted array, and a tree's rows start at tree * n
        self._flat_keys = index.tree_keys.reshape(-1)
        self._flat_order = index.tree_order.reshape(-1)
        self._tree_starts = np.arange(self.trees, dtype=np.int64) * index.n
        self._scratch = threading.local()
        self.projection = Projection.from_array(index.projection)

    @cached_property
    def compiled_arrays(self) -> compiled.Arrays | None:
        """The arrays the compiled rerank reads (views, laid out once), or None: trees of byte strings."""
        if self._codes is None or self.index.n >= 2**31:  # its scratch rows are int32
            return None
        idx, codes, ro = self.index, self._codes, compiled.read_only
        return compiled.Arrays(
            values=ro(np.concatenate(codes._values).astype(np.uint32)),
            value_starts=ro(np.cumsum([0] + [len(v) for v in codes._values]).astype(np.int64)),
            shifts=ro(codes._shifts.astype(np.int64)), tree_shift=int(codes.tree_shift),
            flat_keys=ro(self._flat_keys), flat_order=ro(self._flat_order), codes=ro(idx.projected),
            bits=ro(idx.topk_bits), features=ro(idx.features), components=ro(self.projection.components),
            scale=ro(self.projection.scale), levels=self.projection.weight_levels)

    def _buffers(self) -> threading.local:
        """This thread's scratch arrays for this shard, made on first use and reused by every later query."""
        mine = self._scratch
        if not hasattr(mine, "winner"):
            mine.winner = np.empty(self.index.n, dtype=np.intp)
        return mine

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
        """Per tree and depth, the range of sorted keys sharing the query's prefix: ``(trees, depth + 1, 2)``,
        positions within each tree; row ``d`` is depth ``d`` (row 0 unused)."""
        out = np.zeros((self.trees, self.depth + 1, 2), dtype=np.int64)
        if self._codes is not None:  # every tree and depth in one searchsorted each way
            low, high = self._codes.bounds(q.signature)
            # one call for both ends: the first key above ``high`` is where ``high + 1`` would go on the left
            # (codes stay far below 2**64 - 1: the tree's number takes at most the bits above the bands)
            ends = np.searchsorted(self._flat_keys, np.stack([low, high + np.uint64(1)], axis=-1).ravel(), "left")
            out[:, 1:, :] = ends.reshape(self.trees, self.depth, 2) - self._tree_starts[:, None, None]
            return out
        bands = q.signature.astype(">u4").tobytes()
        depths = range(1, self.depth + 1)
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
        """The distinct keys sharing the query's prefix of ``depth`` in some tree (in no particular order), and in
        how many trees.

        No sort: every gathered row writes its position into a scratch array indexed by row; whichever write
        lands, exactly one position per distinct row reads itself back, and counting the positions read back
        gives each row's trees.
        """
        trees = np.flatnonzero(active[:, depth])
        if not len(trees):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        starts = self._tree_starts[trees]
        lo, hi = (ranges[trees, depth, 0] + starts).tolist(), (ranges[trees, depth, 1] + starts).tolist()
        gathered = np.concatenate([self._flat_order[a:b] for a, b in zip(lo, hi)]).astype(np.intp)
        winner = self._buffers().winner
        positions = np.arange(len(gathered))
        winner[gathered] = positions
        read_back = winner[gathered]
        firsts = np.flatnonzero(read_back == positions)
        keys = gathered[firsts]
        votes = np.bincount(read_back, minlength=len(gathered))[firsts]
        mine = keys != q.exclude
        return keys[mine].astype(np.int64), votes[mine]

    def jaccard(self, q: QueryVector, rows: np.ndarray) -> np.ndarray:
        """Estimated Jaccard (share of equal MinHash values) of the query's set and each row's."""
        return (rows_of(self.index.signatures, rows) == q.signature).mean(axis=1)

    def cosine(self, q: QueryVector, rows: np.ndarray) -> np.ndarray:
        """Each row's cosine with the query, in float64: every product of two float32 is exact there, so however a
        sum is ordered (einsum here, the compiled path's vector lanes, BLAS's kernels chosen by the number of rows)
        it lands within ~1e-13 of any other, and a row ranks the same whichever rows, shard or path it is scored
        with (two different rows tie only when their cosines agree to ~1e-13)."""
        return np.einsum("ij,j->i", rows_of(self.index.features, rows), q.feature.astype(np.float64))

    def projected(self, q: QueryVector, rows: np.ndarray) -> np.ndarray:
        """Each row's score along the projection's directions: ranks rows about as their cosine does
        (``index/projection.py``), from 128 bytes a row instead of 5,120."""
        # einsum, not BLAS: a BLAS call wakes its threads, whose spinning afterwards slowed this query's next
        # numpy steps ~3x on a 2-core machine (the int8 cast: 0.33 against 0.10 ms at 4,800 candidates)
        codes = rows_of(self.index.projected, rows).astype(np.float32)
        return np.einsum("ij,j->i", codes, self.projection.weights(q.feature))

    def projection_share(self) -> float:
        """The share of the collection's variance the projection's directions hold (how far to trust them)."""
        return self.projection.variance

    def shared(self, q: QueryVector, rows: np.ndarray) -> np.ndarray:
        """How many top-K dimensions each row shares with the query."""
        dim = self.index.features.shape[1]
        return bitmap_intersections(bitmaps(q.topk[None, :], dim)[0], rows_of(self.index.topk_bits, rows))

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


class Parts(Protocol):
    """Who answers for a collection's shards: ``sizes`` (rows per shard, in order) and ``each(method, calls)``,
    which asks ``getattr(Shard, method)(*args)`` of each ``(part, args)`` and returns the answers in order (the
    methods are :class:`Shard`'s public ones). :class:`LocalParts` asks here; ``search.ray_parts.RayParts`` asks
    one Ray actor per shard; another backend is one class with these two members."""

    sizes: list[int]

    def each(self, method: str, calls: list[tuple[int, tuple[Any, ...]]]) -> list[Any]: ...


class LocalParts:
    """The shards of a collection in this process: each question is asked of each part in turn."""

    def __init__(self, shards: list[Shard]) -> None:
        self.shards = shards
        self.sizes = [shard.n for shard in shards]

    def each(self, method: str, calls: list[tuple[int, tuple[Any, ...]]]) -> list[Any]:
        """``getattr(shard, method)(*args)`` for each ``(part, args)``, answers in the same order."""
        return [getattr(self.shards[part], method)(*args) for part, args in calls]
