"""Query by an image file that is not in the collection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import invoke
from PIL import Image
from stl10_fixture import make_images

from stl10_similarity.cli import main
from stl10_similarity.sources import stl10
from stl10_similarity.sources.images import decode_square


def _photo(size=(120, 90)) -> Image.Image:
    pixels = make_images(np.array([3]), seed=11)[0].transpose(1, 2, 0)
    return Image.fromarray(pixels).resize(size)


@pytest.mark.parametrize("name,make", [
    ("photo.png", lambda: _photo()),
    ("photo.jpg", lambda: _photo((300, 200))),
    ("photo.webp", lambda: _photo()),
    ("gray.png", lambda: _photo().convert("L")),
    ("alpha.png", lambda: _photo().convert("RGBA")),
    ("palette.png", lambda: _photo().convert("P")),
    ("deep.png", lambda: Image.fromarray(np.asarray(_photo().convert("L"), np.uint16) * 257)),
    ("tiny.png", lambda: _photo((5, 3))),
])
def test_any_image_file_is_searched(built_cache, tmp_path, name, make):
    path = tmp_path / name
    make().save(path)
    result = invoke("query", "--image", str(path), "-k", "4", "--json", "--cache-dir", str(built_cache))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["query"] == {"id": None, "label": None, "class_index": None, "image": str(path)}
    assert [r["rank"] for r in doc["results"]] == [1, 2, 3, 4]


def test_collection_image_saved_as_file_finds_itself(built_cache, tmp_path):
    """The same preprocessing as extraction: an exported collection image's best match is that image."""
    collection = stl10.open_source(built_cache / "data", "train+test")
    path = tmp_path / "img17.png"
    Image.fromarray(collection.images(17, 18)[0].transpose(1, 2, 0)).save(path)
    doc = json.loads(invoke("query", "--image", str(path), "-k", "1", "--method", "exact", "--json",
                            "--cache-dir", str(built_cache)).stdout)
    assert doc["results"][0]["id"] == 17
    assert doc["results"][0]["cosine"] == pytest.approx(1.0, abs=1e-4)


def test_image_query_png_and_text(built_cache, tmp_path):
    path = tmp_path / "q.jpg"
    _photo().save(path)
    png = tmp_path / "grid.png"
    result = invoke("query", "--image", str(path), "--png", str(png), "--cache-dir", str(built_cache))
    assert result.exit_code == 0 and result.stdout.startswith(f"Query: image file {path}")
    with Image.open(png) as img:
        assert img.size == (1440, 300)


def test_mixed_ids_and_images_give_ndjson(built_cache, tmp_path):
    path = tmp_path / "q.png"
    _photo().save(path)
    out = invoke("query", "--image-id", "4", "--image", str(path), "--json", "--cache-dir", str(built_cache)).stdout
    assert [json.loads(line)["query"]["id"] for line in out.strip().splitlines()] == [4, None]


def _claims(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` pixels, with none behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("content", [b"", b"GIF89a-not-really", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
                                     _claims(30_000, 30_000), _claims(9000, 9000), _claims(5, 400)])
def test_broken_files_exit_2(built_cache, tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["query", "--image", str(path), "--cache-dir", str(built_cache)])
    assert result.exit_code == 2 and str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_truncated_jpeg_exits_2(built_cache, tmp_path):
    path = tmp_path / "cut.jpg"
    _photo((400, 300)).save(path)
    path.write_bytes(path.read_bytes()[:600])
    result = CliRunner().invoke(main, ["query", "--image", str(path), "--cache-dir", str(built_cache)])
    assert result.exit_code == 2 and "could not be decoded" in result.stderr


def test_decoder_handles_modes(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (10, 20, 30, 0))
    rgba.save(tmp_path / "t.png")
    assert decode_square(tmp_path / "t.png", 8)[:, 0, 0].tolist() == [255, 255, 255]  # transparent -> white
    deep = Image.fromarray(np.full((2, 3), 65535, np.uint16))
    deep.save(tmp_path / "d.png")
    arr = decode_square(tmp_path / "d.png", 8)
    assert arr.shape == (3, 8, 8) and arr.dtype == np.uint8 and arr.max() == 255


def test_bf16_collection_is_searchable_from_a_cpu_without_bf16(tmp_path, archive, monkeypatch):
    """A cache made on a bf16 machine and copied to one without: image queries fall back to fp32, not an error."""
    from stl10_similarity.ingest import model as features

    cache = str(tmp_path / "c")
    monkeypatch.setattr(features, "cpu_has_bf16", lambda: True)
    invoke("-q", "download", "--archive", str(archive), "--no-verify", "--cache-dir", cache)
    assert invoke("-q", "extract", "--weights", "none", "--image-size", "64", "--limit", "40", "--precision", "bf16",
                  "--cache-dir", cache).exit_code == 0
    assert invoke("-q", "index", "--cache-dir", cache).exit_code == 0
    monkeypatch.setattr(features, "cpu_has_bf16", lambda: False)
    collection = stl10.open_source(tmp_path / "c" / "data", "train+test", 40)
    path = tmp_path / "img9.png"
    Image.fromarray(collection.images(9, 10)[0].transpose(1, 2, 0)).save(path)
    result = invoke("query", "--image", str(path), "-k", "1", "--method", "exact", "--json", "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    best = json.loads(result.stdout)["results"][0]
    assert best["id"] == 9 and best["cosine"] > 0.99


def test_fp16_collection_is_searchable_from_a_cpu(cache, tmp_path):
    """A cache extracted in fp16 on a GPU, copied to a CPU-only machine: image queries embed in fp32 there."""
    from stl10_similarity.ingest.model import query_precision

    assert query_precision("fp16", "cpu") == "fp32" and query_precision("bf16", "cpu") in ("bf16", "fp32")
    manifest_path = cache / "features" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["params"]["precision"] = "fp16"  # what a GPU run records
    manifest_path.write_text(json.dumps(manifest))
    source = stl10.open_source(cache / "data", "train+test")
    path = tmp_path / "img4.png"
    Image.fromarray(source.images(4, 5)[0].transpose(1, 2, 0)).save(path)
    result = invoke("-q", "query", "--image", str(path), "-k", "1", "--method", "exact", "--json", "--cache-dir", str(cache))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["id"] == 4
