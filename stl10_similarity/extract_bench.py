"""``stl10sim bench --stage extract``: the naive input path against ours, side by side on the same images.

Naive = what a straightforward script does: per-image PIL conversion and the weights' transforms on
PIL images, float32, contiguous (NCHW) tensors. Ours = uint8 batches straight from STL-10's binary
files, resized and normalised as tensors, channels-last, in the requested precision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stl10_similarity.bench import machine, peak_rss_growth
from stl10_similarity.index.signatures import set_statistics, top_k_sets
from stl10_similarity.ingest.model import (
    FeatureModel,
    build_model,
    build_preprocess,
    cpu_has_bf16,
    normalise,
    pick_device,
)
from stl10_similarity.params import EXTRACT_BENCH_N, ExtractParams, IndexParams
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.sources import Source

CPU_BATCHES = (4, 8, 16, 32, 64)
GPU_BATCHES = (64, 128, 256, 512, 1024)


@dataclass
class ExtractRow:
    name: str
    batch_size: int
    images_per_second: float
    ratio_vs_naive_b64: float
    peak_rss_mb: float


def _naive(weights: str, image_size: int, device: str) -> Callable[[np.ndarray], np.ndarray]:
    import torch
    from PIL import Image

    model = build_model(weights).to(device)
    transform = build_preprocess(image_size)

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.stack([transform(Image.fromarray(img.transpose(1, 2, 0))) for img in images]).to(device)
            pooled = torch.nn.functional.adaptive_avg_pool2d(model.features(x), 1).flatten(1)
        return normalise(pooled.cpu().numpy())

    return run


def _throughput(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int) -> tuple[float, float, np.ndarray]:
    run(images[:batch])  # warm-up: allocator, kernels
    out = []
    with peak_rss_growth() as rss:
        t0 = time.perf_counter()
        for lo in range(0, len(images), batch):
            out.append(run(images[lo : lo + batch]))
        seconds = time.perf_counter() - t0
    return len(images) / seconds, rss["mb"], np.concatenate(out)


def fidelity(reference: np.ndarray, other: np.ndarray, index: IndexParams = IndexParams(), k: int = 10) -> dict[str, float]:
    """How much reduced precision changes answers: feature cosine, top-K set Jaccard, top-k result overlap."""
    cosine = float(np.mean(np.sum(reference * other, axis=1)))
    stats = set_statistics(reference)
    top_k = index.top_k
    a, b = top_k_sets(reference, top_k, index.basis, stats), top_k_sets(other, top_k, index.basis, stats)
    inter = np.array([len(np.intersect1d(x, y, assume_unique=True)) for x, y in zip(a, b)])
    jaccard = float(np.mean(inter / (2 * top_k - inter)))
    k = min(k, len(reference) - 1)

    def knn(x: np.ndarray) -> np.ndarray:
        scores = x @ x.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1)[:, :k]

    overlap = float(np.mean([len(np.intersect1d(p, q)) / k for p, q in zip(knn(reference), knn(other))]))
    return {"mean_cosine": round(cosine, 5), "mean_topk_jaccard": round(jaccard, 4), "top10_overlap": round(overlap, 4)}


def run_extract_bench(source: Source, params: ExtractParams = ExtractParams(), *, n: int = EXTRACT_BENCH_N,
                      progress: Progress = SILENT) -> dict[str, Any]:
    """Images/s of the naive input path and ours on the first ``n`` images of ``source``, side by side."""
    weights, image_size, device = params.weights, params.image_size, pick_device(params.device)
    step = lambda what: progress.note(f"bench: {what} ...")  # noqa: E731
    images = source.images(0, min(n, source.size))
    rows: list[tuple[str, int, float, float]] = []
    naive = _naive(weights, image_size, device)
    for batch in (1, 64):
        step(f"naive PIL fp32, batch {batch}")
        ips, rss, _ = _throughput(naive, images, batch)
        rows.append(("naive PIL fp32", batch, ips, rss))
    outputs: dict[str, np.ndarray] = {}
    gpu = device in ("cuda", "mps")
    if gpu:  # GPUs: half precision too, and the large batches that fill them
        precisions, batches = ["fp32", "fp16", "bf16"] if device == "cuda" else ["fp32", "fp16"], GPU_BATCHES
    else:
        precisions, batches = ["fp32"] + (["bf16"] if cpu_has_bf16() else []), CPU_BATCHES
    kept = batches[0]
    step(f"tensor path fp32, BatchNorm not folded, batch {kept}")
    ips, rss, _ = _throughput(FeatureModel(weights, image_size, device, "fp32", fold_norms=False), images, kept)
    rows.append(("tensor fp32, BN kept", kept, ips, rss))
    for precision in precisions:
        model = FeatureModel(weights, image_size, device, precision)
        for batch in batches:
            step(f"tensor path {precision}, batch {batch}")
            ips, rss, out = _throughput(model, images, batch)
            rows.append((f"tensor {precision}, BN folded", batch, ips, rss))
            outputs.setdefault(precision, out)
    base = next(ips for name, batch, ips, _ in rows if name == "naive PIL fp32" and batch == 64)
    table = [ExtractRow(name, batch, round(ips, 1), round(ips / base, 2), rss) for name, batch, ips, rss in rows]
    return {
        "n": len(images), "image_size": image_size, "device": device, "weights": weights, "machine": machine(),
        "rows": [asdict(r) for r in table],
        "fidelity": {p: fidelity(outputs["fp32"], outputs[p]) for p in outputs if p != "fp32"},
    }
