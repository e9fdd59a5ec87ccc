#!/usr/bin/env python3
"""In-process extraction timing, split into model load and the work (first batch read to committed manifest).

    python benchmarks/extract_timing.py DEV_DATA_DIR --weights PATH [--images 100000] [--precision fp16]
        [--batch-size 512] [--device auto] [--pipelined both|on|off]

Builds a collection of --images 96x96 images in STL-10's layout by tiling DEV_DATA_DIR's photos (all of them
as the `unlabeled` part), then runs `extract` in this process (imports are paid once, before timing) with the
reading/writing threads on and off, and the network alone on one device-resident batch for reference (run
first, so it also warms the device up).
Prints one JSON document. Meant for GPUs (issue 11's 70 % target); runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SHAPE, tiled  # benchmarks/ is on the path when run as a script

from stl10_similarity.bench import machine
from stl10_similarity.ingest.extract import extract
from stl10_similarity.ingest.model import FeatureModel, default_batch_size, pick_device, resolve_precision
from stl10_similarity.params import ExtractParams
from stl10_similarity.sources import stl10


def network_only(params: ExtractParams, batch: int, device: str, precision: str, repeats: int = 20) -> float:
    import torch

    model = FeatureModel(params.weights, params.image_size, device, precision)
    images = np.random.default_rng(0).integers(0, 255, (batch, *SHAPE), dtype=np.uint8)
    x = torch.from_numpy(images).to(device)
    with torch.inference_mode():
        def run() -> None:
            y = model.transform(x).to(model.dtype).contiguous(memory_format=torch.channels_last)
            model.model.features(y).float().mean()
        for _ in range(3):
            run()
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            run()
        if device == "cuda":
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dev_data", type=Path)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--pipelined", choices=["both", "on", "off"], default="both")
    args = parser.parse_args()
    device = pick_device(args.device)
    precision = resolve_precision(args.precision, device)
    batch = args.batch_size or default_batch_size(precision, device, args.image_size)
    params = ExtractParams(split="unlabeled", weights=args.weights, precision=precision, batch_size=batch,
                           device=device, image_size=args.image_size)
    work = Path(tempfile.mkdtemp(prefix="stl10sim-timing-"))
    tiled(args.dev_data, work / "data", args.images)
    source = stl10.open_source(work / "data", "unlabeled")
    # The network alone first: it also pays the device's one-off start (CUDA context, kernel selection), which
    # a long-running extract pays once and the runs below should not be charged for.
    reference = network_only(params, batch, device, precision)
    runs = []
    for pipelined in {"both": (True, False), "on": (True,), "off": (False,)}[args.pipelined]:
        result = extract(source, work / f"cache-{pipelined}", params, force=True, pipelined=pipelined)
        runs.append({"pipelined": pipelined, "model_seconds": result.model_seconds, "work_seconds": result.work_seconds,
                     "images_per_second": round(source.size / result.work_seconds, 1)})
        print(json.dumps(runs[-1]), flush=True)
    print(json.dumps({"machine": machine(), "device": device, "precision": precision, "batch_size": batch,
                      "images": source.size, "image_size": args.image_size, "runs": runs,
                      "network_only_images_per_second": round(reference, 1),
                      "share_of_network_only": {str(r["pipelined"]): round(r["images_per_second"] / reference, 3)
                                                for r in runs}}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
