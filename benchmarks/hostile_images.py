#!/usr/bin/env python3
"""The image decoder against hostile images: time and peak memory per image, each in a fresh process.

    python benchmarks/hostile_images.py [--side 232] [--out benchmarks/results/hostile-images.json]

Writes a corpus (thin strips, huge JPEGs baseline and progressive, huge PNG / WebP / BMP / TIFF / GIF just
inside and just outside the limits, 16-bit, palette, many-frame GIF and TIFF, a header that lies about its
size, a format outside the whitelist) to a temporary folder, then decodes each one with
``images.decode_square`` (the path folders, ``query --image`` and uploads share) in its own Python process and
reports the wall time of the decode and its peak resident memory (VmHWM, restarted just before it) above the
resident size then (the file's bytes already read). Goal (issue 22): none above 300 MB or 5 s. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from common import emit  # benchmarks/ is on the path when run as a script

from stl10_similarity.bench import machine


def _child_code() -> str:
    return r"""
import json, sys, time
from pathlib import Path
import numpy, PIL.Image  # imported before measuring, as in a running server
from stl10_similarity.sources.images import ImageError, decode_square
data = Path(sys.argv[1]).read_bytes()
def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
base = status_kb("VmRSS")
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # restart the peak (VmHWM) from here
started = time.perf_counter()
try:
    decode_square(data, int(sys.argv[2]), "x")
    outcome = "decoded"
except ImageError as exc:
    outcome = "refused: " + exc.reason
seconds = time.perf_counter() - started
peak = status_kb("VmHWM")
print(json.dumps({"seconds": round(seconds, 3), "extra_mb": round(max(0, peak - base) / 1024, 1),
                  "outcome": outcome[:160]}))
"""


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with one byte of pixel data: a lie."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def corpus(folder: Path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    def picture(width: int, height: int, mode: str = "RGB") -> Image.Image:
        # smooth content with some texture: compresses like a photo rather than like a blank page
        tile = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(tile).resize((width, height), Image.Resampling.BILINEAR)
        return img if mode == "RGB" else img.convert(mode)

    made: dict[str, Path] = {}

    def save(name: str, img: Any, **options: Any) -> None:
        path = folder / name
        img.save(path, **options)
        made[name] = path

    save("thin-1x1000.png", picture(1, 1000))
    save("thin-1x100000.png", picture(1, 100_000))
    save("strip-20to1-6000x300.png", picture(6000, 300))
    save("jpeg-100mp-baseline.jpg", picture(10_000, 10_000), quality=85)
    save("jpeg-100mp-progressive-over.jpg", picture(10_000, 10_000), quality=85, progressive=True)
    save("jpeg-64mp-progressive.jpg", picture(8000, 8000), quality=85, progressive=True)
    save("jpeg-thin-20to1-44700x2236.jpg", picture(44_700, 2236), quality=85)
    save("png-48mp-rgb.png", picture(8000, 6000), compress_level=1)
    save("png-56mp-rgb-over.png", picture(8000, 7000), compress_level=1)
    save("png-48mp-rgba-over.png", picture(8000, 6000, "RGBA"), compress_level=1)
    save("png-24mp-rgba.png", picture(6000, 4000, "RGBA"), compress_level=1)
    save("png-100mp-grey.png", picture(10_000, 10_000, "L"), compress_level=1)
    save("png-16bit-48mp.png", Image.fromarray(np.asarray(picture(8000, 6000, "L"), np.uint16) * 257),
         compress_level=1)
    save("gif-96mp-palette.gif", picture(9600, 10_000, "P"))
    frames = [picture(256, 256).convert("P") for _ in range(4)] * 250
    save("gif-1000-frames.gif", frames[0], save_all=True, append_images=frames[1:])
    save("tiff-48mp.tif", picture(8000, 6000))
    save("tiff-200-pages.tif", picture(512, 512), save_all=True, append_images=[picture(512, 512)] * 199)
    save("webp-48mp-over.webp", picture(8000, 6000), quality=80, method=0)
    save("webp-12mp.webp", picture(4000, 3000), quality=80, method=0)
    save("bmp-48mp.bmp", picture(8000, 6000))
    save("ico-outside-whitelist.ico", picture(64, 64))
    lie = folder / "png-header-claims-60000x60000.png"
    lie.write_bytes(_png_header_only(60_000, 60_000))
    made[lie.name] = lie
    lie = folder / "png-header-claims-9000x9000.png"  # under the pixel limit, over the decoded-size limit
    lie.write_bytes(_png_header_only(9000, 9000))
    made[lie.name] = lie
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=232, help="the square side (232: the model's 224 px input)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        files = corpus(Path(tmp))
        made_s = time.perf_counter() - started
        for name, path in files.items():
            done = subprocess.run([sys.executable, "-c", _child_code(), str(path), str(args.side)],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                row = {"seconds": None, "extra_mb": None, "outcome": f"crashed: {done.stderr.strip()[-200:]}"}
            else:
                row = json.loads(done.stdout)
            rows.append({"image": name, "file_mb": round(path.stat().st_size / 2**20, 2), **row})
            print(f"{name:40s} {rows[-1]['file_mb']:8.2f} MB  {row['seconds']} s  +{row['extra_mb']} MB  "
                  f"{row['outcome']}", file=sys.stderr)
    worst_s = max(r["seconds"] or 0 for r in rows)
    worst_mb = max(r["extra_mb"] or 0 for r in rows)
    doc = {"machine": machine(), "side": args.side, "corpus_seconds": round(made_s, 1), "images": rows,
           "worst_seconds": worst_s, "worst_extra_mb": worst_mb,
           "goal": "none above 300 MB extra or 5 s", "goal_met": worst_s <= 5 and worst_mb <= 300
           and not any(r["outcome"].startswith("crashed") for r in rows)}
    emit(doc, args.out)


if __name__ == "__main__":
    main()
