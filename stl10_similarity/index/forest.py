"""The LSH forest: datasketch's ``MinHashLSHForest``, filled in bulk, and the same trees as sorted arrays.

datasketch's forest keeps, per tree, the sorted byte strings of each key's band of hash values
(``sorted_hashtables``) and a dict from band to keys. ``prefix_arrays`` computes exactly that order
with numpy (a test checks it against datasketch), stored as ``.npy`` artifacts, so that queries
can search the trees from memory-mapped arrays without unpickling millions of Python objects.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stl10_similarity.index.signatures import SCHEME


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


def prefix_arrays(signatures: np.ndarray, trees: int) -> tuple[np.ndarray, np.ndarray]:
    """Per tree, the bands in datasketch's sorted order ``(trees, n)`` and the keys in that order ``(trees, n)``.

    Keys with the same band keep increasing key order, as datasketch's bucket lists do.
    """
    n = len(signatures)
    depth = signatures.shape[1] // trees
    keys = np.empty((trees, n), dtype=f"S{4 * depth}")
    order = np.empty((trees, n), dtype=np.int32 if n < 2**31 else np.int64)
    for t in range(trees):
        band = band_bytes(signatures, trees, t)
        order[t] = np.argsort(band, kind="stable")
        keys[t] = band[order[t]]
    return keys, order


def merge_prefix_arrays(keys: np.ndarray, order: np.ndarray, row_map: np.ndarray, signatures: np.ndarray,
                        fresh_rows: np.ndarray, trees: int) -> tuple[np.ndarray, np.ndarray]:
    """The trees of an updated collection from its old trees, without sorting everything again.

    ``row_map`` sends each old row to its new row, or to -1 when it left (removed, or rewritten and so in
    ``fresh_rows``); ``fresh_rows`` (ascending) are the new rows whose bands are merged in. Renumbering
    keeps the old order (rows keep their relative order), so the result is exactly
    ``prefix_arrays(signatures, trees)``: bands sorted, ties by row.
    """
    n = len(signatures)
    out_keys = np.empty((trees, n), dtype=keys.dtype)
    out_order = np.empty((trees, n), dtype=np.int32 if n < 2**31 else np.int64)
    fresh_rows = np.asarray(fresh_rows, dtype=np.int64)
    for t in range(trees):
        mapped = row_map[order[t]]
        kept = mapped >= 0
        kept_keys, kept_rows = keys[t][kept], mapped[kept]
        band = band_bytes(signatures[fresh_rows], trees, t)
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
