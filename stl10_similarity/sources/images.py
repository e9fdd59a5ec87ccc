"""The one image decoder: folder images, ``query --image`` files and uploads all become the model's input here.

Every image, whatever its source, is decoded the same way to the square the model's transform starts from
(its centre square, resized to ``side``), so an uploaded photo embeds exactly as the same file in a folder.
Decoding stays bounded for any input the limits admit: only the formats in ``FORMATS`` are opened (no
Ghostscript for EPS, no plugin zoo); size and aspect ratio are read from the header and checked before a pixel
is decoded; JPEGs decode at 1/2, 1/4 or 1/8 scale where that still covers ``side`` (draft mode); other formats
decode whole, so what decoding holds is capped (``MAX_DECODED_BYTES``, per format and mode), then shrink by an
integer factor from the centre square before any mode conversion, so conversions and the final resize work on
small images only. EXIF
orientation is applied everywhere. ``benchmarks/hostile_images.py`` measures time and memory per image.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity.errors import InputError

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")  # what Pillow may open: nothing else is even sniffed
MAX_PIXELS = 100_000_000  # width x height, read from the header, before anything is decoded
# What decoding may hold at its peak: width x height x the bytes a pixel costs (``_bytes_per_pixel``, measured).
# Under 300 MB and 5 s each on a 2-core laptop CPU for anything it admits (benchmarks/hostile_images.py): 48
# megapixels of RGB PNG, TIFF or BMP, 100 of grey, 96 of palette GIF, 64 of progressive JPEG, 12 of WebP.
MAX_DECODED_BYTES = 192 * 2**20
MAX_ASPECT = 20  # longer side over shorter: beyond this it is a strip, not a picture whose centre we can compare
REDUCE_GAP = 3  # shrink by an integer factor only while the square stays >= 3x ``side``: then indistinguishable
_ORIENTATION = 0x0112
# Largest image file read: over the decoded-size limit for any format we open uncompressed (48 MP of RGB is 137 MB
# as BMP or TIFF), and a bound on what one read may hold whatever the file claims.
MAX_FILE_BYTES = 256 * 2**20


class ImageError(InputError):
    """An image that can't be used: not an image, a format we don't open, broken, or outside the limits.

    ``reason`` is the message without the image's name (a folder extraction lists it beside the path)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name} {reason}")
        self.reason = reason


class ImageTooLarge(ImageError):
    """An image over the pixel, decoded-size or aspect-ratio limits (the server answers 413)."""


def decode_square(image: Path | str | bytes, side: int, name: str | None = None) -> np.ndarray:
    """One image (a file's path or its encoded bytes) as uint8 ``(3, side, side)``: oriented, RGB, its centre
    square resized to ``side``.

    Raises:
        ImageError: the data is empty, not an image in ``FORMATS``, broken, or over the limits (ImageTooLarge).
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(image, (bytes, bytearray, memoryview)):
        name = name or str(image)
        image = read_image_file(Path(image), name=name)
    name = name or "the image"
    if not image:
        raise ImageError(name, "is empty")
    handle: Any = io.BytesIO(image)
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own bomb check, beside ours
    try:
        with Image.open(handle, formats=FORMATS) as img:
            _check_header(img, name)
            full = img.size
            if img.format == "JPEG":
                img.draft("RGB", (side, side))  # decode at 1/2, 1/4 or 1/8 scale while still >= side
            _check_decoded_size(img, name, full)
            orientation = _orientation(img)
            square = _centre_square(img, side)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(name, f"is not an image in a format we read ({', '.join(FORMATS)})") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(name, f"is over the {MAX_PIXELS:,} pixel limit") from exc
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:  # truncated or corrupt data
        raise ImageError(name, f"could not be decoded: {exc}") from exc
    if orientation is not None:  # on the small square: turning commutes with taking the centre square
        square = square.transpose(orientation)
    return np.ascontiguousarray(np.asarray(square, dtype=np.uint8).transpose(2, 0, 1))


def read_image_file(path: Path, root: Path | None = None, name: str | None = None) -> bytes:
    """The bytes of an image file. Only a regular file is read (a FIFO would block forever, a device like
    /dev/zero never end), opened without waiting (O_NONBLOCK) and checked on its descriptor; below ``root``, only
    if it resolves inside ``root`` (a symlink may not reach out of the folder); at most the size checked at open
    (a file that grows is read as it was), never over ``MAX_FILE_BYTES``.

    Raises:
        ImageError: gone, not a regular file, outside ``root``, over the size limit, or unreadable.
    """
    name = name or str(path)
    if root is not None:
        why = why_refused(path, root)
        if why:
            raise ImageError(name, why)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise ImageError(name, "does not exist") from exc
    except IsADirectoryError as exc:
        raise ImageError(name, "is a folder, not an image file") from exc
    except PermissionError as exc:
        raise ImageError(name, "cannot be read (permission denied)") from exc
    except OSError as exc:
        raise ImageError(name, f"cannot be opened ({exc.strerror or exc})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(name, "is not a regular file (a folder, FIFO, device or socket)")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageTooLarge(name, f"is {info.st_size / 2**20:,.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB "
                                      "file limit")
        chunks, left = [], info.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 22))
            if not chunk:
                break  # shrank since: what was there
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ImageError(name, f"cannot be read ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)


def why_refused(path: Path, root: Path) -> str | None:
    """Why ``path`` may not be read as an image of the folder ``root`` (a symlink gone, looping, or leading out
    of the folder, or not a regular file), or None when it may."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be looked at ({exc.strerror or exc})"
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.stat(path)
        except FileNotFoundError:
            return "is a symlink to nothing (dangling)"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "is a symlink loop"
            return f"is a symlink that cannot be followed ({exc.strerror or exc})"
        real, base = os.path.realpath(path), os.path.realpath(root)
        if os.path.commonpath([real, base]) != base:
            return "is a symlink to a file outside the folder (copy the file in to include it)"
        info = target
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a FIFO, device or socket)"
    return None


def _check_header(img: Any, name: str) -> None:
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(name, "has no pixels")
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(name, f"is {width} x {height} pixels, over the {MAX_PIXELS:,} pixel limit")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageTooLarge(name, f"is {width} x {height} pixels: its aspect ratio is over {MAX_ASPECT}:1, "
                                  "a strip rather than a picture; crop it")


def _check_decoded_size(img: Any, name: str, full: tuple[int, int]) -> None:
    """``img`` as it will decode (a JPEG drafted); ``full``: its size in the header."""
    width, height = img.size
    if img.format == "JPEG" and img.info.get("progressive"):
        width, height = full  # libjpeg holds a progressive file's coefficients at full size, whatever the draft
    decoded = width * height * _bytes_per_pixel(img)
    if decoded > MAX_DECODED_BYTES:
        raise ImageTooLarge(name, f"is {full[0]} x {full[1]} pixels of {img.format} ({img.mode}): decoding it "
                                  f"takes {decoded / 2**20:,.0f} MB, over the {MAX_DECODED_BYTES // 2**20} MB "
                                  "limit; save it smaller, or as a baseline JPEG (decoded at reduced scale)")


def _bytes_per_pixel(img: Any) -> int:
    """Peak bytes a decoded pixel costs, as measured by benchmarks/hostile_images.py."""
    if img.format == "WEBP":
        return 16  # libwebp decodes through its animation decoder: a canvas, a frame and Pillow's copy
    if img.format == "JPEG" and img.info.get("progressive"):
        return 3  # coefficient buffers (4:2:0); the drafted output is small beside them
    if img.mode == "L":
        return 1
    if img.mode in ("1", "P"):
        return 2  # decoded, then its centre square copied (palette indices can't be averaged in place)
    if img.mode == "PA":
        return 4
    if img.mode.startswith("I;16"):
        return 4  # the same, 2 bytes a pixel
    if img.mode in ("LA", "PA", "RGBA"):
        return 8  # Pillow stores 4 bytes a pixel and reduces alpha premultiplied: a second full-size copy
    return 4  # RGB, CMYK, I, F: Pillow stores 4 bytes a pixel and reduces in place


def _orientation(img: Any) -> Any:
    from PIL import Image

    value = img.getexif().get(_ORIENTATION)
    T = Image.Transpose
    return {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_270,
            7: T.TRANSVERSE, 8: T.ROTATE_90}.get(value)


def _centre_square(img: Any, side: int) -> Any:
    """The centre square as RGB, ``side`` x ``side``: shrunk by an integer factor straight from the decoded image
    while it stays >= REDUCE_GAP x ``side`` (Pillow's reducing_gap: no full-size copy), then resized."""
    from PIL import Image

    width, height = img.size
    s = min(width, height)
    left, top = (width - s) // 2, (height - s) // 2
    box = (left, top, left + s, top + s)
    if img.mode in ("1", "P", "PA") or img.mode.startswith("I;16"):
        # palette indices can't be averaged, nor can Pillow shrink 16-bit: pick pixels down to a few times
        # ``side``, convert that small image, then resize it
        square = img.crop(box)
        factor = s // (REDUCE_GAP * side)
        if factor >= 2:
            square = square.resize((s // factor, s // factor), Image.Resampling.NEAREST)
        return _to_rgb(square).resize((side, side), Image.Resampling.BILINEAR)
    return _to_rgb(img.resize((side, side), Image.Resampling.BILINEAR, box=box, reducing_gap=REDUCE_GAP))


def _to_rgb(img: Any) -> Any:
    from PIL import Image

    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        img = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))  # transparent pixels on white
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")
