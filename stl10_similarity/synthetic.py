"""Synthetic feature vectors that look like MobileNetV2 output, for benchmarks at any scale.

Real pooled MobileNetV2 features are non-negative (ReLU6 then averaging), about 20% zeros, dominated
by dimensions that are large for every image (random pairs have cosine ~0.65), and clustered by
content. We mimic that: a shared skewed base profile, one of ``n // 1000`` sparse cluster profiles,
per-image scale jitter and Gaussian noise, clipped at zero and L2-normalised. Seeded: the same
``(n, seed)`` always gives the same vectors, generated chunk by chunk in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from stl10_similarity.params import DIM


def cluster_count(n: int) -> int:
    return max(10, n // 1000)


def profiles(n: int, seed: int = 0, dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    """The shared base profile ``(dim,)`` and the cluster profiles ``(clusters, dim)``."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(0.6, 1.4, dim).astype(np.float32)
    active = rng.random((cluster_count(n), dim)) < 0.25
    clusters = (active * rng.gamma(1.0, 0.9, (cluster_count(n), dim))).astype(np.float32)
    return base, clusters


def synthetic_chunks(n: int, seed: int = 0, chunk: int = 65536, dim: int = DIM) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(features, cluster_labels)`` chunks that together make ``n`` vectors."""
    base, clusters = profiles(n, seed, dim)
    for index, lo in enumerate(range(0, n, chunk)):
        rng = np.random.default_rng([seed, index])
        m = min(chunk, n - lo)
        labels = rng.integers(0, len(clusters), m)
        x = base * rng.uniform(0.7, 1.3, (m, 1)).astype(np.float32)
        x += clusters[labels] * rng.uniform(0.6, 1.4, (m, 1)).astype(np.float32)
        x += rng.normal(0.0, 0.6, (m, dim)).astype(np.float32)
        np.maximum(x, 0.0, out=x)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        yield x, labels.astype(np.int32)


def synthetic_features(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All ``n`` vectors ``(n, 1280)`` float32 and their cluster labels."""
    feats = np.empty((n, DIM), np.float32)
    labels = np.empty(n, np.int32)
    lo = 0
    for x, y in synthetic_chunks(n, seed):
        feats[lo : lo + len(x)] = x
        labels[lo : lo + len(x)] = y
        lo += len(x)
    return feats, labels
