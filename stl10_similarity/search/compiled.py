"""rerank as one compiled call (numba, ``kernels.py``): the prefix ranges, the union of the trees' ranges, the
prefilter's scores, the choice of which candidates get an exact cosine, and those cosines, without the GIL.

It answers what the numpy path (``shard.py``, ``methods.py``) answers, which stays the reference and the fallback:
the pool is the set the prefix semantics define (the deepest depth reaching the budget, its new keys by trees
matched when it overshoots), the prefilter's scores are integers (exact in any order of summation), every choice
breaks ties by the smaller row, and cosines are float64 sums of exact products (any two orders agree to ~1e-13,
so two rows rank differently only where their cosines agree that closely).

Loaded on demand (:func:`load`): importing numba and reading its cached machine code costs ~0.45 s a process
(compiling it the first time on a machine ~10 s), so one-off queries stay on numpy and processes that answer
many load it first (docs/decisions.md).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from stl10_similarity import numba_modules
from stl10_similarity.params import NO_COMPILED_ENV, compiled_disabled, usable_cores

DISABLE_ENV = NO_COMPILED_ENV  # set (to anything but "" or "0"): numpy only, numba is never imported

KERNELS = "stl10_similarity.search.kernels"


disabled = compiled_disabled  # whether this process was told not to load numba (``DISABLE_ENV``)


def load() -> Any | None:
    """The compiled functions (the ``kernels`` module), compiled or read from numba's cache and run once on first
    use; None where numba is not installed, the environment turns it off or it cannot compile them (the numpy path
    answers then)."""
    return numba_modules.load(KERNELS, _warm, "the compiled rerank", "the numpy path")


def loaded() -> bool:
    """Whether this process has the compiled functions ready (loading them is what one-off queries avoid)."""
    return numba_modules.loaded(KERNELS)


def read_only(array: np.ndarray) -> np.ndarray:
    """A C-ordered read-only view: memory-mapped and in-memory indexes then give numba one type to compile."""
    view = np.ascontiguousarray(array).view(np.ndarray)
    view.flags.writeable = False
    return view


@dataclass
class Arrays:
    """What the compiled rerank reads of one index part, laid out once: each permutation's sorted values (and
    where each starts), the band codes' shifts, the trees end to end (codes and rows), the projection's int8
    codes, the top-K bitmaps, the features, and the projection's directions and scales; and the scratch arrays
    calls borrow."""

    values: np.ndarray
    value_starts: np.ndarray
    shifts: np.ndarray
    tree_shift: int
    flat_keys: np.ndarray
    flat_order: np.ndarray
    codes: np.ndarray
    bits: np.ndarray
    features: np.ndarray
    components: np.ndarray
    scale: np.ndarray
    levels: int
    _free: queue.LifoQueue[tuple[np.ndarray, ...]] = field(default_factory=queue.LifoQueue, init=False, repr=False)
    _made: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def n(self) -> int:
        return len(self.features)

    @cached_property
    def index(self) -> tuple[np.ndarray, ...]:
        return (self.values, self.value_starts, self.shifts, self.flat_keys, self.flat_order, self.codes, self.bits,
                self.features, self.components, self.scale)

    def _borrow(self) -> tuple[np.ndarray, ...]:
        """One set of scratch arrays (13 bytes an image) for one call, given back by :meth:`_give_back`: reused,
        and no more sets than cores + 1, so a server's many worker threads hold a few sets, not one each (a caller
        beyond waits for a free one)."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                fresh = self._made <= usable_cores()
                if fresh:
                    self._made += 1
            # the union writes each row before it knows whether it is new: one slot more than the rows
            return (np.zeros(self.n, np.int8), np.zeros(self.n, np.int32), np.empty(self.n + 1, np.int32),
                    np.empty(self.n, np.int32)) if fresh else self._free.get()

    def _give_back(self, arrays: tuple[np.ndarray, ...]) -> None:
        self._free.put(arrays)

    def rerank(self, kernels: Any, signature: np.ndarray, exclude: int, query: np.ndarray, topk: np.ndarray,
               budget: int, overshoot: int, keep: int, wanted: int,
               by_projection: bool) -> tuple[np.ndarray, np.ndarray, int]:
        """The ``wanted`` best rows by exact cosine (best first, ties by row), their cosines, and the size of the
        forest's pool for ``budget``, of which the prefilter chose ``keep`` (by the projection, else by shared
        top-K dimensions)."""
        scratch = self._borrow()
        try:
            rows, cosines, pool = kernels.rerank(
                self.index, self.tree_shift, self.n, self.levels, budget, overshoot, keep, wanted, by_projection,
                np.ascontiguousarray(signature, dtype=np.uint32), exclude,
                np.ascontiguousarray(query, dtype=np.float32), np.ascontiguousarray(topk, dtype=np.int64), scratch)
        finally:
            self._give_back(scratch)
        if pool < 0:
            raise ValueError("a signature value is not in the token table: signatures and table disagree")
        return rows, cosines, int(pool)

    def rerank_many(self, kernels: Any, signatures: np.ndarray, excludes: np.ndarray, queries: np.ndarray,
                    topks: np.ndarray, budget: int, overshoot: int, keep: int,
                    wanted: int, by_projection: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`rerank` for each row of the stacked arguments, in one call: rows ``(queries, wanted)`` (-1 past a
        query's results), cosines, pool sizes."""
        scratch = self._borrow()
        try:
            rows, cosines, pools = kernels.rerank_many(
                self.index, self.tree_shift, self.n, self.levels, budget, overshoot, keep, wanted, by_projection,
                np.ascontiguousarray(signatures, dtype=np.uint32), np.ascontiguousarray(excludes, dtype=np.int64),
                np.ascontiguousarray(queries, dtype=np.float32), np.ascontiguousarray(topks, dtype=np.int64), scratch)
        finally:
            self._give_back(scratch)
        if (pools < 0).any():
            raise ValueError("a signature value is not in the token table: signatures and table disagree")
        return rows, cosines, pools


def _warm(kernels: Any) -> None:
    """One call of each on a tiny made-up index, so the compile (or cache read) happens here and not in a query."""
    n, trees, depth, dim = 4, 2, 2, 8
    table = np.arange(trees * depth, dtype=np.uint32)
    tiny = Arrays(values=read_only(table), value_starts=read_only(np.arange(trees * depth + 1, dtype=np.int64)),
                  shifts=read_only(np.array([1, 0], dtype=np.int64)), tree_shift=2,
                  flat_keys=read_only(np.arange(trees * n, dtype=np.uint64)),
                  flat_order=read_only(np.zeros(trees * n, np.int32)), codes=read_only(np.zeros((n, dim), np.int8)),
                  bits=read_only(np.zeros((n, 1), np.uint64)), features=read_only(np.zeros((n, dim), np.float32)),
                  components=read_only(np.zeros((dim, dim), np.float32)), scale=read_only(np.ones(dim, np.float32)),
                  levels=1)
    query, topk = np.zeros(dim, np.float32), np.zeros(1, np.int64)
    tiny.rerank(kernels, table, -1, query, topk, 2, 2, 2, 1, True)
    tiny.rerank_many(kernels, table[None, :], np.array([-1]), query[None, :], topk[None, :], 2, 2, 2, 1, True)
