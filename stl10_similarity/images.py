"""Reading user image files (any format Pillow reads) as uint8 RGB arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

MAX_PIXELS = 100_000_000  # refuse decompression bombs rather than exhaust memory


def load_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 ``(3, H, W)``: grayscale, palette, alpha and 16-bit handled.

    Raises:
        InputError: the file is unreadable, not an image, or absurdly large.
    """
    return _decode(path, str(path))


def decode_rgb(data: bytes, name: str = "the image") -> np.ndarray:
    """Encoded image bytes (an upload, say) as uint8 ``(3, H, W)``; errors name the image ``name``."""
    import io

    if not data:
        raise InputError(f"{name} is empty")
    return _decode(io.BytesIO(data), name)


def _decode(handle: Any, path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(handle) as img:
            if img.width * img.height > MAX_PIXELS:  # checked before decoding a single pixel
                raise InputError(f"{path} is {img.width} x {img.height} pixels, over the {MAX_PIXELS:,} pixel limit")
            img.load()
            rgb = _to_rgb(img)
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path} is not an image Pillow can read ({exc.__class__.__name__})") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise InputError(f"{path} could not be decoded: {exc}") from exc
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(f"{path} has no pixels")
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _to_rgb(img):  # type: ignore[no-untyped-def]
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
