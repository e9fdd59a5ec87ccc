"""Which centroids an image is nearest: dot products of 8-bit codes, exact in integers.

An image's centred features are scaled so their largest magnitude is ``ROW_LEVELS`` and rounded to int8; the
centroids share one scale that puts their largest magnitude at ``CENTROID_LEVELS``. Ranking a row's centroids
by the integer dot product of the codes is ranking by cosine up to the rounding (0.99 of each image's 12
nearest are the float32 ones at 50,000 real photos, docs/decisions.md), and it has two properties float32
lacks: the products are exact, so every CPU and every path (torch's int8 matrix product, or a float matrix
product of the same small integers) gives the same sets; and int8 products run 3.6x faster than float32 ones
where the CPU has VNNI (0.24 against 0.87 s for 8,192 x 4,096 x 1,280 here), which is most of a million's build.
Ties go to the lower centroid id.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

ROW_LEVELS = 127
# 7 bits: x86 CPUs without VNNI multiply int8 pairs into int16 sums (u8 x s8), which 63 keeps from saturating
CENTROID_LEVELS = 63
# rows a product covers: 1,024 x 4,096 int32 scores (16 MB) stay below glibc's 32 MB mmap threshold, so the
# memory is reused; at 4,096 rows each fresh 64 MB took 1M page faults a quarter-million images (6.0 vs 7.9-8.4 s)
CHUNK = 1024
# recorded in every index's parameters: an index whose sets were assigned otherwise (float32) is rebuilt
ASSIGNMENT = f"int8 codes, {ROW_LEVELS} x {CENTROID_LEVELS} levels"


def row_codes(x: np.ndarray) -> np.ndarray:
    """Each row's int8 codes: the row scaled so its largest magnitude is ``ROW_LEVELS``, rounded (a row's own
    scale never changes the order of its centroids)."""
    x = np.asarray(x, dtype=np.float32)
    scaled = np.abs(x)
    peak = scaled.max(axis=1, keepdims=True)
    np.multiply(x, ROW_LEVELS / np.maximum(peak, 1e-30), out=scaled)  # one scratch array, reused
    return np.rint(scaled, out=scaled).astype(np.int8)


def centroid_codes(centroids: np.ndarray) -> np.ndarray:
    """The centroids' int8 codes under one shared scale (so scores compare across centroids)."""
    c = np.asarray(centroids, dtype=np.float32)
    peak = float(np.abs(c).max()) if c.size else 0.0
    return np.rint(c * np.float32(CENTROID_LEVELS / max(peak, 1e-30))).astype(np.int8)


@lru_cache(maxsize=1)
def _int8_products_exact() -> bool:
    """Whether torch's int8 matrix product is present here and exact at the extremes our codes reach
    (checked once per process against float64; the float path is used otherwise, with the same results)."""
    import torch

    rng = np.random.default_rng(0)
    a = rng.integers(-ROW_LEVELS, ROW_LEVELS + 1, size=(32, 1280)).astype(np.int8)
    a[0], a[1] = ROW_LEVELS, -ROW_LEVELS  # the largest sums either way
    b = rng.integers(-CENTROID_LEVELS, CENTROID_LEVELS + 1, size=(64, 1280)).astype(np.int8)
    b[0], b[1] = CENTROID_LEVELS, -CENTROID_LEVELS
    want = a.astype(np.float64) @ b.astype(np.float64).T
    try:
        with torch.inference_mode():
            got = torch._int_mm(torch.from_numpy(a), torch.from_numpy(b).T).numpy()
    except (RuntimeError, AttributeError, TypeError):
        return False
    return bool(np.array_equal(got, want))


def scores(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Exact int32 dot products ``(n, count)`` of row codes ``(n, d)`` and centroid codes ``(count, d)``."""
    import torch

    a, b = torch.from_numpy(np.ascontiguousarray(rows)), torch.from_numpy(np.ascontiguousarray(centroids))
    with torch.inference_mode():
        if _int8_products_exact():
            try:
                return torch._int_mm(a, b.T).numpy()
            except RuntimeError:  # a shape this torch's int8 product does not take: the float path below
                pass
        # every partial sum is an integer below 2**24 (float32) or 2**53 (float64): exact in any order
        exact = torch.float32 if rows.shape[1] * ROW_LEVELS * CENTROID_LEVELS < 2**24 else torch.float64
        return (a.to(exact) @ b.to(exact).T).to(torch.int32).numpy()


class Nearest:
    """The nearest of a fixed set of centroids, for rows of any scale (their codes are made per row)."""

    def __init__(self, centroids: np.ndarray) -> None:
        self.count = len(centroids)
        self.codes = centroid_codes(centroids)
        # a product of codes over this is a cosine (given the row's own scale, see ``cosines``)
        self.unit = ROW_LEVELS * CENTROID_LEVELS / max(float(np.abs(centroids).max()), 1e-30)

    def __call__(self, x: np.ndarray, size: int, chunk: int = CHUNK, cosines: bool = True,
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Per row of ``x``, the ids of its ``size`` nearest centroids, best first (equal scores in any order; at
        the boundary the lower id is kept), and
        (with ``cosines``) each one's approximate cosine: two ``(n, size)`` arrays, int64 and float32."""
        import torch

        size = min(size, self.count)
        idx = np.empty((len(x), size), dtype=np.int64)
        val = np.empty((len(x) if cosines else 0, size), dtype=np.float32)
        for lo in range(0, len(x), chunk):
            block = np.asarray(x[lo : lo + chunk], dtype=np.float32)
            s = scores(row_codes(block), self.codes)
            with torch.inference_mode():
                # one more than asked: where the last two are equal the boundary is a tie, settled by id below
                top = torch.topk(torch.from_numpy(s), min(size + 1, self.count), dim=1, sorted=True)
            ids, best = top.indices.numpy()[:, :size], top.values.numpy()
            for row in np.flatnonzero(best[:, size - 1] == best[:, size]) if size < self.count else ():
                ids[row] = _with_ties_by_id(s[row], size)
            idx[lo : lo + chunk] = ids
            if cosines:
                val[lo : lo + chunk] = self.cosines(block, np.take_along_axis(s, ids, axis=1))
        return idx, val

    def cosines(self, block: np.ndarray, products: np.ndarray) -> np.ndarray:
        """Code products back to cosines: undo the centroids' scale and the row's (its largest magnitude, its
        norm)."""
        peak = np.abs(block).max(axis=1, keepdims=True)
        norm = np.linalg.norm(block, axis=1, keepdims=True)
        return (products * (peak / np.maximum(norm, 1e-30)) / np.float32(self.unit)).astype(np.float32)


def _with_ties_by_id(row_scores: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` best of one row's scores, best first, equal scores by ascending id."""
    order = np.lexsort((np.arange(len(row_scores)), -row_scores.astype(np.int64)))
    return order[:size]
