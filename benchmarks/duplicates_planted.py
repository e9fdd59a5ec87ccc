#!/usr/bin/env python3
"""Planted near-duplicates: does `stl10sim duplicates` find them, and what else does it group?

    python benchmarks/duplicates_planted.py PHOTO_FOLDER --weights PATH [--plant 1000] [--image-size 224]

Copies the photos of PHOTO_FOLDER (say the dev photos' train/, frog left out) into a new folder and plants
--plant copies of distinct photos, each resized (x1.5), re-encoded at JPEG quality 40, or cropped by 2 pixels
on every side, in turn. Extracts and indexes it as a collection, runs `stl10sim duplicates` (timed, whole
process) and exact all-pairs search at the same threshold (timed, in blocks), and reports the share of planted
pairs found, the pairs exact search finds that the forest misses, and groups with no planted pair.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def plant(source: Path, target: Path, count: int, seed: int = 0) -> list[tuple[str, str]]:
    from PIL import Image

    shutil.copytree(source, target)
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*.jpg"))
    rng = np.random.default_rng(seed)
    planted = []
    for n, original in enumerate(rng.choice(files, size=min(count, len(files)), replace=False)):
        with Image.open(target / original) as img:
            img = img.convert("RGB")
            kind = n % 3
            if kind == 0:
                copy = img.resize((img.width * 3 // 2, img.height * 3 // 2), Image.Resampling.BICUBIC)
                options = {"quality": 90}
            elif kind == 1:
                copy, options = img, {"quality": 40}
            else:
                copy, options = img.crop((2, 2, img.width - 2, img.height - 2)), {"quality": 90}
        name = original.replace(".jpg", f"_dup{n}.jpg")
        copy.save(target / name, **options)
        planted.append((original, name))
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--plant", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stl10sim-dups-"))
    planted = plant(args.photos, work / "photos", args.plant)
    env = {**os.environ, "STL10SIM_CACHE_DIR": str(work / "cache")}
    cli = [sys.executable, "-m", "stl10_similarity", "-q"]
    subprocess.run([*cli, "extract", "--images", str(work / "photos"), "--collection", "dups", "--weights", args.weights,
                    "--image-size", str(args.image_size)], env=env, check=True)
    subprocess.run([*cli, "index", "--collection", "dups"], env=env, check=True)
    t0 = time.perf_counter()
    out = subprocess.run([*cli, "duplicates", "--collection", "dups", "--json", "--threshold", str(args.threshold)],
                         env=env, check=True, capture_output=True, text=True).stdout
    forest_seconds = time.perf_counter() - t0
    groups = [json.loads(line) for line in out.splitlines()]
    group_of = {p: g for g, doc in enumerate(groups) for p in doc["paths"]}
    found = sum(1 for a, b in planted if a in group_of and group_of.get(a) == group_of.get(b))
    planted_groups = {group_of[a] for a, b in planted if a in group_of and group_of.get(a) == group_of.get(b)}

    folder = work / "cache" / "collections" / "dups" / "features"
    feats = np.load(folder / "features.npy")
    keys = np.load(folder / "keys.npy")
    t0 = time.perf_counter()
    exact_pairs = []
    for lo in range(0, len(feats), 2048):
        scores = feats[lo : lo + 2048] @ feats.T
        rows, cols = np.nonzero(scores >= args.threshold)
        keep = cols > rows + lo
        exact_pairs += list(zip((rows[keep] + lo).tolist(), cols[keep].tolist()))
    exact_seconds = time.perf_counter() - t0
    forest_pairs = {(a, b) for doc in groups for a in doc["ids"] for b in doc["ids"] if a < b}
    missed = [p for p in exact_pairs if p not in forest_pairs]
    index = {k: i for i, k in enumerate(keys.tolist())}
    planted_cos = [float(feats[index[a]] @ feats[index[b]]) for a, b in planted]
    print(json.dumps({
        "images": len(feats), "planted_pairs": len(planted), "threshold": args.threshold, "image_size": args.image_size,
        "planted_found": found, "planted_found_share": round(found / len(planted), 4),
        "planted_pairs_below_threshold": sum(c < args.threshold for c in planted_cos),
        "planted_cosine_min_median": [round(min(planted_cos), 4), round(float(np.median(planted_cos)), 4)],
        "groups": len(groups), "groups_without_a_planted_pair": len(groups) - len(planted_groups),
        "exact_pairs": len(exact_pairs), "exact_pairs_missed_by_forest": len(missed),
        "duplicates_process_seconds": round(forest_seconds, 2), "exact_all_pairs_seconds": round(exact_seconds, 2),
    }, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
