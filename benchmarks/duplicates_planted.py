#!/usr/bin/env python3
"""Planted near-duplicates: does `stl10sim duplicates` find them, and what else does it group?

    python benchmarks/duplicates_planted.py PHOTO_FOLDER --weights PATH [--plant 1000] [--image-size 224]
        [--upscale 256] [--worlds 10] [--keep DIR] [--out results.json]
    python benchmarks/duplicates_planted.py --reuse DIR [--worlds 10] [--out results.json]

Copies the photos of PHOTO_FOLDER (say the dev photos' train/, frog left out) into a new folder and plants
--plant copies of distinct photos, each resized (x1.5), re-encoded at JPEG quality 40, or cropped by 2 pixels
on every side, in turn. --upscale SIDE first resizes every photo to SIDE x SIDE (bicubic, JPEG quality 95), so
that "a few pixels" and "x1.5" mean what they do for photo-sized images rather than for 32 px thumbnails.
Extracts and indexes it as a collection, runs `stl10sim duplicates` (timed, whole process) and exact all-pairs
search at the same threshold (timed, in blocks), and reports the share of planted pairs found (per kind), the
pairs exact search finds that the forest misses, and groups with no planted pair. --keep DIR saves the features
and the planted list; --reuse DIR starts from them (no extraction).

--worlds W measures the same search in-process at W times the size: the collection's real features plus W - 1
copies of them, each with the dimensions of its centred features shuffled by its own fixed permutation. Each
copy keeps the collection's neighbourhoods (its planted pairs stay planted pairs) while looking like no other
copy, so this is a collection of real feature statistics W times larger, with W times the planted pairs.
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
from common import collection_arrays, emit, exact_pairs, worlds  # benchmarks/ is on the path when run as a script

KINDS = ("resized x1.5", "JPEG quality 40", "cropped 2 px")


def plant(source: Path, target: Path, count: int, seed: int = 0, upscale: int | None = None) -> list[list]:
    from PIL import Image

    shutil.copytree(source, target)
    if upscale:
        for path in target.rglob("*.jpg"):
            with Image.open(path) as img:
                big = img.convert("RGB").resize((upscale, upscale), Image.Resampling.BICUBIC)
            big.save(path, quality=95)
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
        planted.append([str(original), name, kind])
    return planted


def measure(feats: np.ndarray, planted: list[tuple[int, int, int]], threshold: float) -> dict:
    """The duplicate search in-process (the code `stl10sim duplicates` runs) against exact all pairs."""
    from stl10_similarity.duplicates import find_duplicates
    from stl10_similarity.index import index_in_memory
    from stl10_similarity.params import DuplicatesParams

    t0 = time.perf_counter()
    index = index_in_memory(feats, np.full(len(feats), -1, np.int16), [])
    index_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    groups = find_duplicates(index, DuplicatesParams(threshold=threshold))
    search_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = exact_pairs(feats, threshold)
    exact_seconds = time.perf_counter() - t0
    return {"images": len(feats), "index_build_seconds": round(index_seconds, 2),
            "duplicates_seconds": round(search_seconds, 2), "exact_all_pairs_seconds": round(exact_seconds, 2),
            **score(feats, groups, planted, exact, threshold)}


def score(feats: np.ndarray, groups: list, planted: list[tuple[int, int, int]], exact: set[tuple[int, int]],
          threshold: float) -> dict:
    group_of = {i: g for g, group in enumerate(groups) for i in group.ids}
    hit = [a in group_of and group_of.get(a) == group_of.get(b) for a, b, _ in planted]
    cos = np.array([float(feats[a] @ feats[b]) for a, b, _ in planted])
    kinds = np.array([k for _, _, k in planted])
    linked = {(a, b) for g in groups for a in g.ids for b in g.ids if a < b}
    with_planted = {group_of[a] for (a, b, _), h in zip(planted, hit) if h}
    return {
        "planted_pairs": len(planted), "planted_found": int(sum(hit)),
        "planted_found_share": round(sum(hit) / len(planted), 4),
        "planted_at_or_above_threshold": int((cos >= threshold).sum()),
        "planted_found_of_those": round(sum(hit) / max(1, int((cos >= threshold).sum())), 4),
        "per_kind": {KINDS[k]: {"found": int(np.array(hit)[kinds == k].sum()), "of": int((kinds == k).sum()),
                                "cosine_min_median": [round(float(cos[kinds == k].min()), 4),
                                                      round(float(np.median(cos[kinds == k])), 4)]}
                     for k in range(3)},
        "groups": len(groups), "groups_without_a_planted_pair": len(groups) - len(with_planted),
        "exact_pairs": len(exact), "exact_pairs_found": len(exact & linked),
        "exact_pairs_found_share": round(len(exact & linked) / max(1, len(exact)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path, nargs="?")
    parser.add_argument("--weights")
    parser.add_argument("--plant", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--upscale", type=int, default=None)
    parser.add_argument("--worlds", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--reuse", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report: dict = {"threshold": args.threshold}
    if args.reuse:
        feats = np.load(args.reuse / "features.npy")
        keys = np.load(args.reuse / "keys.npy")
        planted = json.loads((args.reuse / "planted.json").read_text())
        report.update(json.loads((args.reuse / "setup.json").read_text()))
    else:
        if args.photos is None or args.weights is None:
            parser.error("PHOTO_FOLDER and --weights are needed unless --reuse is given")
        work = Path(tempfile.mkdtemp(prefix="stl10sim-dups-"))
        planted = plant(args.photos, work / "photos", args.plant, upscale=args.upscale)
        env = {**os.environ, "STL10SIM_CACHE_DIR": str(work / "cache")}
        cli = [sys.executable, "-m", "stl10_similarity", "-q"]
        subprocess.run([*cli, "extract", "--images", str(work / "photos"), "--collection", "dups", "--weights",
                        args.weights, "--image-size", str(args.image_size)], env=env, check=True)
        subprocess.run([*cli, "index", "--collection", "dups"], env=env, check=True)
        t0 = time.perf_counter()
        subprocess.run([*cli, "duplicates", "--collection", "dups", "--json", "--threshold", str(args.threshold)],
                       env=env, check=True, capture_output=True, text=True)
        report["duplicates_process_seconds"] = round(time.perf_counter() - t0, 2)
        feats, keys = collection_arrays(work / "cache" / "collections" / "dups", "features", "keys")
        folder = work / "cache" / "collections" / "dups" / "features"  # the verified files, kept with --keep
        setup = {"image_size": args.image_size, "upscale": args.upscale}
        report.update(setup)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for name in ("features", "keys"):
                shutil.copy(folder / f"{name}.npy", args.keep / f"{name}.npy")
            (args.keep / "planted.json").write_text(json.dumps(planted))
            (args.keep / "setup.json").write_text(json.dumps(setup))
        shutil.rmtree(work, ignore_errors=True)
    row = {k: i for i, k in enumerate(keys.tolist())}
    pairs = [(row[a], row[b], kind) for a, b, kind in planted]
    report["at_collection_size"] = measure(feats, pairs, args.threshold)
    if args.worlds > 1:
        n = len(feats)
        many = [(a + w * n, b + w * n, kind) for w in range(args.worlds) for a, b, kind in pairs]
        report[f"x{args.worlds}"] = measure(worlds(feats, args.worlds), many, args.threshold)
    emit(report, args.out)


if __name__ == "__main__":
    main()
