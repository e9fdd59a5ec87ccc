"""The one image decoder (folders, `query --image`, uploads): formats, limits checked before decoding, orientation."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from stl10_fixture import make_images

from stl10_similarity.sources.images import MAX_ASPECT, MAX_DECODED_BYTES, ImageError, ImageTooLarge, decode_square


def _encoded(img: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=format, **options)
    return buffer.getvalue()


def _header_only_png(width: int, height: int, colour_type: int = 2) -> bytes:
    """A PNG whose header claims ``width`` x ``height``: a file that would cost that much only if decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _photo(width: int, height: int) -> Image.Image:
    return Image.fromarray(make_images(np.array([2]), seed=3)[0].transpose(1, 2, 0)).resize((width, height))


@pytest.mark.parametrize("format", ["ICO", "TGA", "PCX", "PPM"])
def test_formats_outside_the_whitelist_are_not_opened(format):
    data = _encoded(Image.new("RGB", (16, 16), (200, 0, 0)), format)
    with Image.open(io.BytesIO(data)) as img:  # Pillow itself would read it
        assert img.format
    with pytest.raises(ImageError, match="not an image in a format we read"):
        decode_square(data, 32, "x")


def test_an_eps_file_is_refused_without_ghostscript():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match="not an image in a format we read"):
        decode_square(eps, 32, "drawing.eps")


def test_limits_are_checked_from_the_header_before_decoding():
    with pytest.raises(ImageTooLarge, match="pixel limit"):
        decode_square(_header_only_png(20_000, 20_000), 32, "bomb.png")
    side = int((MAX_DECODED_BYTES / 4) ** 0.5) + 100  # under the pixel limit, over what RGB may decode to
    with pytest.raises(ImageTooLarge, match=f"over the {MAX_DECODED_BYTES // 2**20} MB limit"):
        decode_square(_header_only_png(side, side), 32, "big.png")
    # the same size in grey (1 byte a pixel) is admitted: it fails only when its (missing) pixels are decoded
    with pytest.raises(ImageError, match="could not be decoded"):
        decode_square(_header_only_png(side, side, colour_type=0), 32, "grey.png")


@pytest.mark.parametrize("size", [(1, 1000), (1000, 1), (MAX_ASPECT * 10 + 1, 10)])
def test_strips_beyond_the_aspect_limit_are_refused(size):
    data = _encoded(Image.new("RGB", size, (9, 9, 9)), "PNG")
    with pytest.raises(ImageTooLarge, match=f"over {MAX_ASPECT}:1"):
        decode_square(data, 32, "strip.png")


def test_a_strip_at_the_limit_decodes_to_its_centre_square():
    strip = Image.new("RGB", (MAX_ASPECT * 10, 10), (0, 0, 255))
    strip.paste((255, 0, 0), (MAX_ASPECT * 5 - 5, 0, MAX_ASPECT * 5 + 5, 10))  # the centre 10 x 10 is red
    out = decode_square(_encoded(strip, "PNG"), 32)
    inner = out[:, 3:-3, 3:-3]  # the resize filter reaches a pixel past the square at its edges
    assert out.shape == (3, 32, 32) and inner[0].min() > 200 and inner[2].max() < 60


def test_bytes_and_path_decode_alike_with_exif_orientation(tmp_path):
    img = _photo(120, 80)
    exif = img.getexif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    path = tmp_path / "turned.jpg"
    img.save(path, exif=exif, quality=95)
    from_path = decode_square(path, 48)
    assert np.array_equal(from_path, decode_square(path.read_bytes(), 48))
    upright = decode_square(_encoded(img.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95), 48)
    assert np.abs(from_path.astype(int) - upright.astype(int)).mean() < 4  # JPEG noise, not a turned image
    unturned = decode_square(_encoded(img, "JPEG", quality=95), 48)
    assert np.abs(from_path.astype(int) - unturned.astype(int)).mean() > 4 * np.abs(
        from_path.astype(int) - upright.astype(int)).mean()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_large_images_shrink_first_and_look_like_a_direct_resize(mode):
    """The integer shrink before the last resize (and nearest picks for palettes) changes almost nothing."""
    big = _photo(1800, 1500)
    source = big.convert(mode) if mode != "I;16" else Image.fromarray(
        np.asarray(big.convert("L"), np.uint16) * 257)
    out = decode_square(_encoded(source, "PNG"), 64).astype(int)
    reference = big.convert("L" if mode in ("L", "I;16") else "RGB").crop((150, 0, 1650, 1500))
    reference = np.asarray(reference.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), int).transpose(2, 0, 1)
    assert out.shape == (3, 64, 64)
    assert np.abs(out - reference).mean() < (12 if mode == "P" else 3), mode


def test_a_big_jpeg_is_decoded_at_reduced_scale():
    data = _encoded(_photo(4000, 3000), "JPEG", quality=85)
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (64, 64))
        assert img.size == (500, 375)  # what draft mode decodes: 1/8 of the pixels each way
    assert decode_square(data, 64).shape == (3, 64, 64)


@pytest.mark.parametrize("data, message", [
    (b"", "is empty"),
    (b"GIF89a" + b"\0" * 20, "could not be decoded|not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "could not be decoded|not an image"),
])
def test_broken_data_is_one_clear_error(data, message):
    with pytest.raises(ImageError, match=message) as caught:
        decode_square(data, 32, "upload.png")
    assert str(caught.value).startswith("upload.png ")
