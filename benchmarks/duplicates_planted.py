#!/usr/bin/env python3
"""Planted duplicates: does `stl10sim duplicates` find them, and what else does it group?

    python benchmarks/duplicates_planted.py PHOTO_FOLDER --weights PATH [--first 0] [--per-class 1000]
        [--plant 1000] [--upscale 256] [--keep DIR] [--out results.json]
    python benchmarks/duplicates_planted.py --reuse DIR [--worlds 100] [--out results.json]

Copies --per-class photos of each class folder of PHOTO_FOLDER (from number --first on: another --first is another
split) into a new folder and plants --plant copies of distinct photos, a fifth each: an exact copy, re-encoded at
JPEG quality 60, resized to 60 %, cropped by 1-4 pixels a side, brightened by 10 %. --upscale SIDE first resizes
every photo to SIDE x SIDE. Extracts the folder as a collection (224 px, --weights), then runs the duplicate search
`stl10sim duplicates` runs (in-process, timed) with the default parameters and reports, per edit, the share of
planted pairs found in one group of the right kind (exact copies in an exact group, the others in a near group),
and the precision: the share of pairs within the near and exact groups that are planted pairs. --keep DIR keeps
the photos and the collection; --reuse DIR starts from them.

--worlds W measures the candidate search at W times the size, in-process, without pictures (near by cosine
alone, as for imported features): the collection's real features plus W - 1 copies with their centred dimensions
shuffled (benchmarks/common.py `worlds`), each keeping its planted pairs; beside exact all-pairs search over the
first 50,000 images.
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
from common import emit, exact_pairs, worlds  # benchmarks/ is on the path when run as a script

EDITS = ("exact copy", "JPEG quality 60", "resized to 60 %", "cropped 1-4 px", "brightness +10 %")


def plant(source: Path, target: Path, first: int, per_class: int, count: int, upscale: int | None,
          seed: int = 7) -> list[list]:
    from PIL import Image, ImageEnhance

    files = []
    for cls in sorted(p.name for p in source.iterdir() if p.is_dir()):
        (target / cls).mkdir(parents=True)
        names = sorted(p.name for p in (source / cls).iterdir())[first : first + per_class]
        for name in names:
            if upscale:
                with Image.open(source / cls / name) as img:
                    big = img.convert("RGB").resize((upscale, upscale), Image.Resampling.BICUBIC)
                big.save(target / cls / name, quality=95)
            else:
                shutil.copy(source / cls / name, target / cls / name)
            files.append(f"{cls}/{name}")
    rng = np.random.default_rng(seed)
    planted = []
    for n, original in enumerate(rng.choice(files, size=min(count, len(files)), replace=False)):
        edit, name = n % 5, original.rsplit(".", 1)[0] + f"_dup{n}.jpg"
        if edit == 0:
            shutil.copy(target / original, target / name.replace(".jpg", Path(original).suffix))
            name = name.replace(".jpg", Path(original).suffix)
        else:
            with Image.open(target / original) as img:
                img = img.convert("RGB")
                if edit == 1:
                    img.save(target / name, quality=60)
                elif edit == 2:
                    img.resize((max(1, img.width * 3 // 5), max(1, img.height * 3 // 5)),
                               Image.Resampling.BICUBIC).save(target / name, quality=90)
                elif edit == 3:
                    c = int(rng.integers(1, 5))
                    img.crop((c, c, img.width - c, img.height - c)).save(target / name, quality=90)
                else:
                    ImageEnhance.Brightness(img).enhance(1.1).save(target / name, quality=90)
        planted.append([str(original), name, edit])
    return planted


def score(groups: list, rows_of: dict[int, int], planted: list[tuple[int, int, int]], n: int) -> dict:
    """Planted pairs found per edit, and the precision of the exact and near groups."""
    group_of: dict[tuple[str, int], int] = {}
    pairs: set[tuple[int, int]] = set()
    for g, group in enumerate(groups):
        rows = [rows_of[i] for i in group.ids]
        for row in rows:
            group_of[(group.kind, row)] = g
        if group.kind in ("exact", "near"):
            pairs |= {(a, b) for a in rows for b in rows if a < b}
    want = {0: "exact"}
    found = [group_of.get((want.get(e, "near"), a), -1) == group_of.get((want.get(e, "near"), b), -2)
             or (e == 0 and group_of.get(("near", a), -1) == group_of.get(("near", b), -2))
             for a, b, e in planted]
    planted_pairs = {(min(a, b), max(a, b)) for a, b, _ in planted}
    edits = np.array([e for _, _, e in planted])
    hits = np.array(found)
    return {
        "images": n, "planted_pairs": len(planted), "planted_found": int(hits.sum()),
        "planted_found_share": round(float(hits.mean()), 4),
        "per_edit": {EDITS[e]: {"found": int(hits[edits == e].sum()), "of": int((edits == e).sum())}
                     for e in range(len(EDITS))},
        "pairs_in_exact_and_near_groups": len(pairs), "of_them_planted": len(pairs & planted_pairs),
        "precision": round(len(pairs & planted_pairs) / max(1, len(pairs)), 4),
        "groups": {kind: sum(g.kind == kind for g in groups) for kind in ("exact", "near", "similar")},
    }


def at_collection_size(home: Path, planted_names: list[list]) -> dict:
    from stl10_similarity import Session
    from stl10_similarity.params import DuplicatesParams

    session = Session.open(home)
    rows = {str(k): i for i, k in enumerate(session.index.paths)}
    planted = [(rows[a], rows[b], e) for a, b, e in planted_names]
    t0 = time.perf_counter()
    groups = session.duplicates(DuplicatesParams())
    seconds = time.perf_counter() - t0
    ids = session.index.ids_of(np.arange(session.n))
    report = score(groups, {int(i): r for r, i in enumerate(ids.tolist())}, planted, session.n)
    report["duplicates_seconds"] = round(seconds, 2)
    with_similar = session.duplicates(DuplicatesParams(kinds=("similar",)))
    report["similar_groups"] = len(with_similar)
    report["similar_images"] = sum(len(g.ids) for g in with_similar)
    return report


def at_scale(home: Path, planted_names: list[list], count: int, reference: int = 50_000) -> dict:
    """The candidate search without pictures at ``count`` times the size, beside exact all pairs on a subset."""
    from stl10_similarity import Session
    from stl10_similarity.duplicates import find_duplicates
    from stl10_similarity.index import index_in_memory
    from stl10_similarity.params import DuplicatesParams, IndexParams

    session = Session.open(home)
    feats = np.asarray(session.index.features, dtype=np.float32)
    rows = {str(k): i for i, k in enumerate(session.index.paths)}
    n = len(feats)
    many = worlds(feats, count)
    planted = [(rows[a] + w * n, rows[b] + w * n, e) for w in range(count) for a, b, e in planted_names if e]
    t0 = time.perf_counter()
    index = index_in_memory(many, np.full(len(many), -1, np.int16), [], IndexParams(sets="top-dims"))  # no k-means
    build = time.perf_counter() - t0
    params = DuplicatesParams(kinds=("near",))
    t0 = time.perf_counter()
    groups = find_duplicates(index, params)
    seconds = time.perf_counter() - t0
    report = score(groups, {i: i for i in range(len(many))}, planted, len(many))
    del report["per_edit"]["exact copy"]
    report.update({"near_by_cosine_at": params.near_cosine, "index_build_seconds": round(build, 1),
                   "duplicates_seconds": round(seconds, 1)})
    sub = min(reference, len(many))
    t0 = time.perf_counter()
    exact = exact_pairs(many[:sub], params.near_cosine)
    linked = {(a, b) for g in groups for a in g.ids for b in g.ids if a < b and b < sub}
    report["all_pairs_reference"] = {
        "images": sub, "seconds": round(time.perf_counter() - t0, 1), "pairs_at_near_cosine": len(exact),
        "found_by_the_forest": len(exact & linked), "share": round(len(exact & linked) / max(1, len(exact)), 4)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path, nargs="?")
    parser.add_argument("--weights")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--plant", type=int, default=1000)
    parser.add_argument("--upscale", type=int, default=None)
    parser.add_argument("--worlds", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--reuse", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.reuse:
        work = args.reuse
        setup = json.loads((work / "setup.json").read_text())
    else:
        if args.photos is None or args.weights is None:
            parser.error("PHOTO_FOLDER and --weights are needed unless --reuse is given")
        work = args.keep or Path(tempfile.mkdtemp(prefix="stl10sim-dups-"))
        planted = plant(args.photos, work / "photos", args.first, args.per_class, args.plant, args.upscale)
        env = {**os.environ, "STL10SIM_CACHE_DIR": str(work / "cache")}
        subprocess.run([sys.executable, "-m", "stl10_similarity", "-q", "extract", "--images", str(work / "photos"),
                        "--collection", "dups", "--weights", args.weights], env=env, check=True)
        setup = {"photos": str(args.photos), "first": args.first, "per_class": args.per_class,
                 "upscale": args.upscale, "planted": planted}
        (work / "setup.json").write_text(json.dumps(setup))
    os.environ["STL10SIM_CACHE_DIR"] = str(work / "cache")
    home = work / "cache" / "collections" / "dups"
    report: dict = {k: v for k, v in setup.items() if k != "planted"}
    report["at_collection_size"] = at_collection_size(home, setup["planted"])
    if args.worlds > 1:
        report[f"x{args.worlds}"] = at_scale(home, setup["planted"], args.worlds)
    emit(report, args.out)
    if not args.reuse and not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
