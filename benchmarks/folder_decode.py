#!/usr/bin/env python3
"""Folder collections' input path against a naive PIL loop, and against STL-10's binary path, side by side.

    python benchmarks/folder_decode.py DEV_DATA_DIR PHOTO_FOLDER --weights PATH [--images 2000] [--large 48]

DEV_DATA_DIR holds the dev photos in STL-10's layout (build_dev_stl10.py); PHOTO_FOLDER the same photos as
JPEG files (cifar10_dev.tar.gz's train/, frog left out). Also generates --large 4000x3000 JPEGs. Reports, in one
process: decoding alone (naive: PIL open + convert + torchvision Resize/CenterCrop on the full image; ours:
FolderSource, JPEG draft mode, threads) and whole extraction images/s at 224 px (model included) for the STL-10
binary path, the folder path and the naive loop. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from stl10_similarity.bench import machine
from stl10_similarity.ingest.model import FeatureModel, build_preprocess, pick_device, resize_side, resolve_precision
from stl10_similarity.sources import stl10
from stl10_similarity.sources.folders import FolderSource, scan


def naive_decode(paths: list[Path], image_size: int) -> list:
    from PIL import Image
    from torchvision import transforms

    prep = transforms.Compose([transforms.Resize(resize_side(image_size)), transforms.CenterCrop(image_size),
                               transforms.PILToTensor()])
    out = []
    for path in paths:
        with Image.open(path) as img:
            out.append(prep(img.convert("RGB")))
    return out


def rate(run, count: int) -> float:
    t0 = time.perf_counter()
    run()
    return count / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dev_data", type=Path)
    parser.add_argument("photos", type=Path)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--large", type=int, default=48)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    import torch
    from PIL import Image

    device = pick_device("auto")
    precision = resolve_precision("auto", device)
    model = FeatureModel(args.weights, args.image_size, device, precision)
    batch = 8 if precision == "bf16" else 4
    side = resize_side(args.image_size)
    work = Path(tempfile.mkdtemp(prefix="stl10sim-decode-"))
    rng = np.random.default_rng(0)
    for i in range(args.large):  # smooth colour fields with noise: compress like photos, not like static
        base = rng.integers(0, 255, (3, 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((4000, 3000), Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(img, np.int16) + rng.integers(-12, 12, (3000, 4000, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(work / f"large{i:03d}.jpg", quality=90)
    small = FolderSource(args.photos, side)
    small_n = min(args.images, small.size)
    large = FolderSource(work, side)
    stl = stl10.open_source(args.dev_data, "train+test")
    transform = build_preprocess(args.image_size)

    def ours(source: FolderSource, n: int, embed: bool) -> None:
        for lo in range(0, n, batch if embed else 64):
            images = source.images(lo, min(lo + (batch if embed else 64), n))
            if embed:
                model(images)

    def naive(paths: list[Path], embed: bool) -> None:
        for lo in range(0, len(paths), batch):
            tensors = naive_decode(paths[lo : lo + batch], args.image_size)
            if embed:
                with torch.inference_mode():
                    x = torch.stack(tensors)
                    model(x.numpy())  # the same network and normalisation; the transform's crop is a no-op here

    def binary(n: int) -> None:
        for lo in range(0, n, batch):
            model(stl.images(lo, min(lo + batch, n)))

    small_paths = [args.photos / k for k in scan(args.photos)[:small_n]]
    large_paths = [work / k for k in scan(work)]
    del transform
    rows = {
        "decode_only_images_per_second": {
            "small_naive": round(rate(lambda: naive_decode(small_paths, args.image_size), small_n), 1),
            "small_ours": round(rate(lambda: ours(small, small_n, False), small_n), 1),
            "large_naive": round(rate(lambda: naive_decode(large_paths, args.image_size), len(large_paths)), 1),
            "large_ours": round(rate(lambda: ours(large, len(large_paths), False), len(large_paths)), 1),
        },
        "extract_images_per_second": {
            "small_stl10_binary": round(rate(lambda: binary(small_n), small_n), 1),
            "small_folder_ours": round(rate(lambda: ours(small, small_n, True), small_n), 1),
            "large_naive": round(rate(lambda: naive(large_paths, True), len(large_paths)), 1),
            "large_folder_ours": round(rate(lambda: ours(large, len(large_paths), True), len(large_paths)), 1),
        },
    }
    e, d = rows["extract_images_per_second"], rows["decode_only_images_per_second"]
    print(json.dumps({"machine": machine(), "device": device, "precision": precision, "batch_size": batch,
                      "image_size": args.image_size, "small_images": small_n, "large_images": len(large_paths),
                      **rows, "ratios": {
                          "small_folder_vs_binary": round(e["small_folder_ours"] / e["small_stl10_binary"], 3),
                          "large_ours_vs_naive_extract": round(e["large_folder_ours"] / e["large_naive"], 2),
                          "large_ours_vs_naive_decode": round(d["large_ours"] / d["large_naive"], 2)}}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
