"""A small copy of every feature, for choosing which of the forest's candidates get an exact cosine.

The ``PROJECTION_DIMS`` principal directions of the collection's centred features (fitted on a sample), and each
image's coordinates along them as int8 with one scale per direction: 128 bytes per image, against 5,120 for the
float32 feature. For a query ``q`` the score of a row ``x`` is ``code(x) . (scale * V q)``, which approximates
``(x - mean) . q`` and so ranks rows as their cosine with ``q`` does (``mean . q`` is the same for every row), up
to the part of ``x - mean`` the directions leave out. How much that is, the share of the variance the directions
hold, is recorded: the search trusts the projection only as far as the share allows (``params.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stl10_similarity.params import PROJECTION_DIMS

SAMPLE = 16_384  # rows the directions are fitted on (more changes the share held by < 0.01 at 50,000 real photos)
_CHUNK = 4096


@dataclass(frozen=True)
class Projection:
    """``mean`` (dim,), unit ``components`` (dims, dim), int8 ``scale`` per direction (dims,), and the share of
    the fitted sample's variance the directions hold."""

    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray
    variance: float

    @property
    def dims(self) -> int:
        return len(self.components)

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Each row's int8 coordinates ``(n, dims)`` (clipped at +-127 scale units), chunk by chunk."""
        out = np.empty((len(features), self.dims), dtype=np.int8)
        basis = (self.components / self.scale[:, None]).T.astype(np.float32)
        # two scratch arrays reused chunk after chunk (fresh ones: 1.14 against 0.86-1.0 s at 300,000 images)
        block = np.empty((min(len(features), _CHUNK), len(self.mean)), dtype=np.float32)
        coords = np.empty((len(block), self.dims), dtype=np.float32)
        for lo in range(0, len(features), _CHUNK):
            part = features[lo : lo + _CHUNK]
            rows, got = block[: len(part)], coords[: len(part)]
            np.subtract(part, self.mean, out=rows)
            np.matmul(rows, basis, out=got)
            out[lo : lo + len(part)] = np.clip(np.rint(got, out=got), -127, 127, out=got)
        return out

    def weights(self, feature: np.ndarray) -> np.ndarray:
        """The query's side of the score: ``scale * (components @ q)`` rounded to ``weight_levels`` steps of its
        largest magnitude, (dims,) float32 holding integers. Every score is then an integer below 2**24, which
        float32 sums exactly in any order, so the numpy path and the compiled one (``search/compiled.py``) choose
        the same rows on every CPU; the products are summed in float64 (exact products: any order agrees to ~1e-13),
        so both round alike. At 50,000 real photos the rounding changed 1-2 of 1,000 answers' order and no recall
        (0.9737 / 0.9684 against 0.9736 / 0.9684 for query seeds 0 / 1)."""
        direction = np.einsum("ij,j->i", self.components, np.asarray(feature, dtype=np.float64))  # no BLAS threads
        w = self.scale.astype(np.float64) * direction
        top = float(np.abs(w).max())
        return np.rint(w * (self.weight_levels / top)).astype(np.float32) if top > 0 else np.zeros(self.dims, np.float32)

    @property
    def weight_levels(self) -> int:
        """The most integer steps a weight may take so that a row's score (dims codes of at most 127 times a weight)
        stays below 2**24, float32's exact integers."""
        return (2**24 - 1) // (self.dims * 127)

    def to_array(self) -> np.ndarray:
        """The ``projection.npy`` artifact: ``(dims + 1, dim + 1)`` float32; row 0 is the mean with the variance
        share last, each further row a direction with its scale last."""
        head = np.append(self.mean, self.variance)
        body = np.hstack([self.components, self.scale[:, None]])
        return np.vstack([head, body]).astype(np.float32)

    @classmethod
    def from_array(cls, array: np.ndarray) -> Projection:
        array = np.asarray(array, dtype=np.float32)
        return cls(mean=array[0, :-1], components=array[1:, :-1], scale=array[1:, -1], variance=float(array[0, -1]))


def fit_projection(features: np.ndarray, mean: np.ndarray, seed: int, dims: int = PROJECTION_DIMS) -> Projection:
    """The top ``dims`` principal directions of ``features - mean``, from at most ``SAMPLE`` rows (sorted, so a
    memory-mapped file is read front to back); scales set so the sample's largest coordinate fits int8."""
    n, dim = features.shape
    dims = min(dims, dim)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, SAMPLE, replace=False)) if n > SAMPLE else np.arange(n)
    sample = np.asarray(features[rows], dtype=np.float32) - np.asarray(mean, dtype=np.float32)
    values, vectors = np.linalg.eigh((sample.T @ sample).astype(np.float64))
    order = np.argsort(values)[::-1]
    total = float(values.clip(min=0).sum())
    components = vectors[:, order[:dims]].T.astype(np.float32)
    held = float(values[order[:dims]].clip(min=0).sum() / total) if total > 0 else 1.0
    spread = np.abs(sample @ components.T).max(axis=0) if len(sample) else np.ones(dims)
    scale = (np.maximum(spread, 1e-12) / 127).astype(np.float32)
    return Projection(mean=np.asarray(mean, dtype=np.float32), components=components, scale=scale, variance=held)
