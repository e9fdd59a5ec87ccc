#!/usr/bin/env python3
"""Adding photos to a folder collection: what the update embeds, how long it and the index update take.

    python benchmarks/update_folder.py PHOTO_FOLDER --weights PATH [--add 100] [--image-size 224]

Copies PHOTO_FOLDER (say the dev photos' train/, frog left out) into a new folder and makes it a collection
(`stl10sim extract --images`, then `stl10sim index`), then adds --add new photos (mirror images of distinct
photos, in their class folders), changes 10 files, touches 10 (same bytes, new mtime) and deletes 10, and reruns
`extract` (its summary line) and `index` (updated in place), each a whole timed process, beside `index --force`
(a full build) on the same features. Checks that every added photo is searchable by its id and that its
original is among its 10 nearest neighbours, and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit  # benchmarks/ is on the path when run as a script

from stl10_similarity.store import index_manifest


def run(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "stl10_similarity", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"stl10sim {' '.join(args)} failed:\n{done.stderr}")
    return round(time.perf_counter() - started, 2), done.stdout


def main() -> None:
    from PIL import Image, ImageOps

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--add", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "update-folder.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stl10sim-update-"))
    folder, cache = work / "photos", work / "cache"
    shutil.copytree(args.photos, folder)
    common = ["--collection", "dev", "--cache-dir", str(cache)]
    out: dict = {"photos": str(args.photos), "image_size": args.image_size}
    out["first_extract_s"], first = run("-q", "extract", "--images", str(folder), "--weights", args.weights,
                                        "--image-size", str(args.image_size), *common)
    out["first_line"] = first.strip()
    out["first_index_s"], _ = run("-q", "index", *common)

    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    rng = np.random.default_rng(0)
    picked = rng.choice(len(files), size=args.add + 30, replace=False)
    added = []
    for i in picked[: args.add]:
        name = files[i].replace(".jpg", "_mirror.jpg")
        with Image.open(folder / files[i]) as img:
            ImageOps.mirror(img.convert("RGB")).save(folder / name, quality=95)
        added.append((files[i], name))
    for i in picked[args.add : args.add + 10]:  # changed: the photo turned upside down
        with Image.open(folder / files[i]) as img:
            ImageOps.flip(img.convert("RGB")).save(folder / files[i], quality=95)
    for i in picked[args.add + 10 : args.add + 20]:  # touched: same bytes, a later mtime
        os.utime(folder / files[i], ns=(time.time_ns(), time.time_ns() + 10**9))
    for i in picked[args.add + 20 : args.add + 30]:
        (folder / files[i]).unlink()

    out["update_extract_s"], line = run("-q", "extract", *common)
    out["update_line"] = line.strip()
    out["update_index_s"], _ = run("-q", "index", *common)
    home = cache / "collections" / "dev"
    manifest = index_manifest(home)
    out["index_updated_in_place"] = manifest["updated"]

    from stl10_similarity.session import Session

    session = Session.open(home, build=False)
    row = {str(p): r for r, p in enumerate(session.index.paths)}
    found = 0
    for original, name in added:
        result = session.query(session.index.id_of(row[name]), k=10)
        found += original in [m.path for m in result.results]
    out["added_searchable"] = len(added)
    out["added_with_original_in_top10"] = found
    out["full_index_s"], _ = run("-q", "index", "--force", *common)
    out["machine"] = f"{os.cpu_count()} cores"
    emit(out, args.out)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
