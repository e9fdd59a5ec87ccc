"""The LSH forest: datasketch's ``MinHashLSHForest``, filled in bulk, and the same trees as sorted arrays.

datasketch's forest keeps, per tree, the sorted byte strings of each key's band of hash values
(``sorted_hashtables``) and a dict from band to keys. ``prefix_arrays`` computes exactly that order
with numpy (a test checks it against datasketch), stored as ``.npy`` artifacts, so that queries
can search the trees from memory-mapped arrays without unpickling millions of Python objects.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .signatures import SCHEME


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

        class SignatureForest(MinHashLSHForest):  # type: ignore[misc, valid-type]
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
