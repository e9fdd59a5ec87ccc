"""The LSH forest: datasketch's ``MinHashLSHForest``, filled in bulk, and the same trees as sorted arrays.

datasketch's forest keeps, per tree, the sorted byte strings of each key's band of hash values
(``sorted_hashtables``) and a dict from band to keys. ``prefix_arrays`` computes exactly that order
with numpy (a test checks it against datasketch), stored as ``.npy`` artifacts, so that queries
can search the trees from memory-mapped arrays without unpickling millions of Python objects.

The stored band keys are :class:`BandCodes` (one uint64 per band, the tree's number above it) whenever they fit
in 63 bits, which the default index always does; otherwise datasketch's byte strings (indexes built before the
codes are read as they are).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from stl10_similarity.index.signatures import SCHEME
from stl10_similarity.params import usable_cores


class Sketch:
    """The part of a datasketch MinHash the forest reads: hash values and scheme."""

    __slots__ = ("hashvalues",)
    scheme = SCHEME

    def __init__(self, hashvalues: np.ndarray) -> None:
        self.hashvalues = hashvalues

    def __len__(self) -> int:
        return len(self.hashvalues)


def band_bytes(signatures: np.ndarray, trees: int, tree: int) -> np.ndarray:
    """Tree ``tree``'s band of each signature as datasketch stores it (big-endian bytes), dtype ``S{4*depth}``."""
    depth = signatures.shape[1] // trees
    band = np.ascontiguousarray(signatures[:, tree * depth : (tree + 1) * depth].astype(">u4"))
    return band.view(f"S{4 * depth}").ravel()


class BandCodes:
    """Bands as order-preserving integers, so that one ``searchsorted`` finds every tree's prefix ranges.

    Each MinHash value is replaced by its rank among the values its permutation can take (a token's hash, or the
    empty set's 2**32 - 1: the token table's column), and a band's ranks are packed first-value-highest into one
    uint64 with the tree's number above them. Ranks keep both equality and order, so a band's code sorts exactly
    where datasketch sorts its byte string: the trees' row order is unchanged, equal prefixes stay equal, and the
    trees laid end to end are one sorted array. Needs ``trees`` and the rank bits to fit in 63 bits (``fits``),
    so that a code + 1 never wraps.
    """

    def __init__(self, table: np.ndarray, trees: int) -> None:
        num_perm = table.shape[1]
        self.trees, self.depth = trees, num_perm // trees
        values = [np.unique(table[:, p]) for p in range(num_perm)]  # each permutation's values, sorted
        self._values = values
        self.bits = max(1, max(len(v) - 1 for v in values).bit_length())
        self.tree_shift = self.bits * self.depth
        # (permutation, value) as one uint64, sorted: ranks of a whole signature come from one searchsorted
        self._flat = np.concatenate([(np.uint64(p) << np.uint64(32)) | v.astype(np.uint64) for p, v in enumerate(values)])
        self._start = np.cumsum([0] + [len(v) for v in values[:-1]]).astype(np.int64)
        self._perm = np.arange(num_perm, dtype=np.uint64) << np.uint64(32)
        self._shifts = (self.bits * np.arange(self.depth - 1, -1, -1)).astype(np.uint64)

    @property
    def fits(self) -> bool:
        """Whether the bands' ranks and the tree's number fit in 63 bits."""
        return self.tree_shift + max(1, (self.trees - 1).bit_length()) <= 63

    @classmethod
    def for_table(cls, table: np.ndarray, trees: int) -> BandCodes | None:
        """The codes for an index with this token table, or None where they don't fit (byte strings then)."""
        codes = cls(table, trees)
        return codes if codes.fits else None

    def band(self, signatures: np.ndarray, tree: int) -> np.ndarray:
        """Tree ``tree``'s band of each signature as its code: ``(n,)`` uint64."""
        lo = tree * self.depth
        code = np.full(len(signatures), np.uint64(tree) << np.uint64(self.tree_shift), dtype=np.uint64)
        for j in range(self.depth):  # column by column: each searches its own ~4,000 values, which stay in cache
            values = np.ascontiguousarray(signatures[:, lo + j])
            column = self._values[lo + j]
            pos = np.searchsorted(column, values)
            if not np.array_equal(column[np.minimum(pos, len(column) - 1)], values):
                raise ValueError("a signature value is not in the token table: signatures and table disagree")
            code |= pos.astype(np.uint64) << self._shifts[j]
        return code

    def ranks_of_columns(self, values: np.ndarray, first: int) -> np.ndarray:
        keys = self._perm[first : first + values.shape[1]] | np.asarray(values).astype(np.uint64)
        pos = np.searchsorted(self._flat, keys)
        if not np.array_equal(self._flat[np.minimum(pos, len(self._flat) - 1)], keys):
            raise ValueError("a signature value is not in the token table: signatures and table disagree")
        return (pos - self._start[first : first + values.shape[1]]).astype(np.uint64)

    def bounds(self, signature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For one signature, per tree and depth ``1..depth``, the lowest and highest code sharing its prefix of
        that depth: two ``(trees, depth)`` uint64 arrays."""
        ranks = self.ranks_of_columns(np.asarray(signature)[None, : self.trees * self.depth], 0)
        ranks = ranks.reshape(self.trees, self.depth)
        codes = np.bitwise_or.reduce(ranks << self._shifts, axis=1) | (
            np.arange(self.trees, dtype=np.uint64) << np.uint64(self.tree_shift))
        below = (np.uint64(1) << self._shifts) - np.uint64(1)  # depth d keeps d values: the rest are free
        low = codes[:, None] & ~below[None, :]
        return low, low | below[None, :]


def prefix_arrays(signatures: np.ndarray, trees: int, codes: BandCodes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per tree, the bands in datasketch's sorted order ``(trees, n)`` and the keys in that order ``(trees, n)``.

    Keys with the same band keep increasing key order, as datasketch's bucket lists do. With ``codes`` the bands
    are stored as codes (the same order), else as datasketch's byte strings.
    """
    n = len(signatures)
    depth = signatures.shape[1] // trees
    keys = np.empty((trees, n), dtype=np.uint64 if codes is not None else f"S{4 * depth}")
    order = np.empty((trees, n), dtype=np.int32 if n < 2**31 else np.int64)

    def run(t: int) -> None:  # the searches and the sort release the GIL: trees go on every core
        band = codes.band(signatures, t) if codes is not None else band_bytes(signatures, trees, t)
        order[t] = np.argsort(band, kind="stable")
        keys[t] = band[order[t]]

    with ThreadPoolExecutor(min(trees, usable_cores())) as pool:
        list(pool.map(run, range(trees)))  # list() re-raises a worker's exception here
    return keys, order


def merge_prefix_arrays(keys: np.ndarray, order: np.ndarray, row_map: np.ndarray, signatures: np.ndarray,
                        fresh_rows: np.ndarray, trees: int, codes: BandCodes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The trees of an updated collection from its old trees, without sorting everything again.

    ``row_map`` sends each old row to its new row, or to -1 when it left (removed, or rewritten and so in
    ``fresh_rows``); ``fresh_rows`` (ascending) are the new rows whose bands are merged in. Renumbering
    keeps the old order (rows keep their relative order), so the result is exactly
    ``prefix_arrays(signatures, trees, codes)``: bands sorted, ties by row (``keys`` must be in the same form).
    """
    if (codes is not None) != (keys.dtype == np.uint64):
        raise ValueError("the old trees' keys and the codes asked for differ in form")
    n = len(signatures)
    out_keys = np.empty((trees, n), dtype=keys.dtype)
    out_order = np.empty((trees, n), dtype=np.int32 if n < 2**31 else np.int64)
    fresh_rows = np.asarray(fresh_rows, dtype=np.int64)
    fresh = signatures[fresh_rows]
    for t in range(trees):
        mapped = row_map[order[t]]
        kept = mapped >= 0
        kept_keys, kept_rows = keys[t][kept], mapped[kept]
        band = codes.band(fresh, t) if codes is not None else band_bytes(fresh, trees, t)
        by_band = np.argsort(band, kind="stable")  # fresh_rows ascend, so ties stay in row order
        new_keys, new_rows = band[by_band], fresh_rows[by_band]
        lo = np.searchsorted(kept_keys, new_keys, "left")
        hi = np.searchsorted(kept_keys, new_keys, "right")
        at = lo.copy()
        for j in np.flatnonzero(hi > lo):  # an equal band already there: place by row among the ties
            at[j] = lo[j] + np.searchsorted(kept_rows[lo[j] : hi[j]], new_rows[j])
        out_keys[t] = np.insert(kept_keys, at, new_keys)
        out_order[t] = np.insert(kept_rows, at, new_rows)
    return out_keys, out_order


def _rebuild(num_perm: int, trees: int, signatures: np.ndarray) -> Any:
    forest = _forest_class()(num_perm=num_perm, l=trees)
    forest.fill(signatures)
    return forest


_CLASS: type | None = None


def _forest_class() -> type:
    """``SignatureForest``, defined on first use: importing datasketch costs ~0.4 s (it pulls in scipy)."""
    global _CLASS
    if _CLASS is None:
        from datasketch import MinHashLSHForest

        class SignatureForest(MinHashLSHForest):
            """A ``MinHashLSHForest`` filled in bulk from a signature matrix (key ``i`` = row ``i``).

            ``fill`` builds exactly what ``add`` + ``index`` build (a test compares them) without a Python
            call per key; pickling stores the signatures instead of millions of small objects.
            """

            def fill(self, signatures: np.ndarray) -> None:
                if signatures.ndim != 2 or signatures.shape[1] < self.k * self.l:
                    raise ValueError("signatures must be (n, num_perm) with num_perm >= k * l")
                self._signatures = np.ascontiguousarray(signatures, dtype=np.uint32)
                n, width = len(self._signatures), 4 * self.k
                per_tree = []
                for (start, end), table in zip(self.hashranges, self.hashtables):
                    # datasketch's _H: each band's values as bytes, byte-swapped (big-endian); one band at a time
                    buf = self._signatures[:, start:end].astype(">u4").tobytes()
                    prefixes = [buf[j : j + width] for j in range(0, n * width, width)]
                    for key, prefix in enumerate(prefixes):
                        table[prefix].append(key)
                    per_tree.append(prefixes)
                self.keys = dict(enumerate(map(list, zip(*per_tree)))) if per_tree else {}
                self._minhash_scheme = SCHEME
                self.index()

            def __reduce__(self) -> tuple[Any, ...]:
                return (_rebuild, (self.k * self.l, self.l, self._signatures))

        SignatureForest.__module__ = __name__
        SignatureForest.__qualname__ = "SignatureForest"
        _CLASS = SignatureForest
    return _CLASS


class ForestPickle:
    """Pickles exactly as the ``SignatureForest`` of these signatures would, without building it first.

    Unpickling gives a real, indexed ``MinHashLSHForest``; ``stl10sim index`` never has to hold
    millions of Python objects (about 3 GB at a million images) just to write it.
    """

    def __init__(self, signatures: np.ndarray, trees: int) -> None:
        self.signatures = np.ascontiguousarray(signatures, dtype=np.uint32)
        self.trees = trees

    def __reduce__(self) -> tuple[Any, ...]:
        num_perm = (self.signatures.shape[1] // self.trees) * self.trees
        return (_rebuild, (num_perm, self.trees, self.signatures))


def build_forest(signatures: np.ndarray, trees: int) -> Any:
    """A datasketch ``MinHashLSHForest`` with key ``i`` for signature row ``i``, indexed."""
    return _rebuild(signatures.shape[1], trees, signatures)
