"""A folder of your own images as a collection: labels, formats, orientation, broken files, paths everywhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import invoke
from stl10_fixture import make_images

from stl10_similarity.cli import main
from stl10_similarity.sources.folders import FolderSource, scan
from stl10_similarity.sources.images import decode_square

FAST = ["--weights", "none", "--image-size", "64", "--batch-size", "16"]


def _save(array: np.ndarray, path: Path, **kwargs) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0))).save(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three classes in ImageFolder layout, mixed formats and sizes, one broken file."""
    root = tmp_path_factory.mktemp("photos")
    classes = ["cat", "dog", "ship"]
    images = make_images(np.repeat(np.arange(3), 8), seed=5)
    formats = [(".jpg", {"quality": 90}), (".png", {}), (".webp", {}), (".bmp", {})]
    for i, image in enumerate(images):
        suffix, kwargs = formats[i % len(formats)]
        _save(image, root / classes[i // 8] / f"img{i:02d}{suffix}", **kwargs)
    (root / "dog" / "broken.jpg").write_bytes((root / "dog" / "img08.jpg").read_bytes()[:300])
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_scan_and_imagefolder_labels(photos):
    keys = scan(photos)
    assert len(keys) == 25 and keys[0] == "cat/img00.jpg" and "dog/notes.txt" not in keys
    source = FolderSource(photos, side=74)
    assert source.class_names == ["cat", "dog", "ship"]
    assert source.labels().tolist()[:3] == [0, 0, 0] and set(source.labels().tolist()) == {0, 1, 2}


def test_images_without_class_folders_are_unlabelled(tmp_path):
    images = make_images(np.arange(3), seed=1)
    _save(images[0], tmp_path / "a.png")
    _save(images[1], tmp_path / "sub" / "b.png")
    source = FolderSource(tmp_path, side=32)
    assert source.class_names == [] and source.labels().tolist() == [-1, -1]


def test_decoding_orients_resizes_and_crops(tmp_path):
    from PIL import Image

    wide = np.zeros((3, 40, 100), np.uint8)
    wide[0, :, :50] = 255  # left half red
    path = _save(wide, tmp_path / "wide.png")
    out = decode_square(path, 32)
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    # an EXIF orientation of 6 (rotate 90 degrees clockwise to display): the red half ends up on top
    img = Image.fromarray(np.ascontiguousarray(wide.transpose(1, 2, 0)))
    exif = img.getexif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    img.save(rotated, exif=exif, quality=95)
    turned = decode_square(rotated, 32).astype(int)
    assert turned[0, :8].mean() > 150 and turned[0, -8:].mean() < 100
    # grayscale, palette with transparency, 16-bit and a GIF's first frame all decode to RGB
    Image.new("L", (50, 30), 128).save(tmp_path / "gray.png")
    Image.new("P", (30, 30)).save(tmp_path / "pal.gif")
    Image.new("I;16", (30, 30), 40000).save(tmp_path / "deep.png")
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(tmp_path / "large.jpg", quality=80)
    for name in ("gray.png", "pal.gif", "deep.png", "large.jpg"):
        assert decode_square(tmp_path / name, 32).shape == (3, 32, 32), name
    assert abs(int(decode_square(tmp_path / "large.jpg", 32)[1].mean()) - 200) < 5


@pytest.fixture(scope="module")
def folder_cache(photos, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("fcache") / "cache"
    result = CliRunner().invoke(main, ["extract", "--images", str(photos), "--collection", "mine", *FAST,
                                       "--cache-dir", str(cache)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return cache


def test_extract_skips_broken_files_with_one_warning_each(photos, tmp_path):
    result = CliRunner().invoke(main, ["extract", "--images", str(photos), "--collection", "mine", *FAST,
                                       "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0 and result.stdout.startswith("24 new, 0 changed, 0 removed, 0 unchanged: 24 images")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 1 and "dog/broken.jpg" in warnings[0]
    assert "skipped 1 file(s)" in result.stderr
    manifest = json.loads((tmp_path / "c" / "collections" / "mine" / "features" / "manifest.json").read_text())
    assert [s["path"] for s in manifest["skipped"]] == ["dog/broken.jpg"] and manifest["n"] == 24
    assert manifest["inputs"]["source"]["kind"] == "folder"


def test_query_results_carry_paths(folder_cache):
    doc = json.loads(invoke("-q", "query", "--collection", "mine", "--image-id", "0", "-k", "4", "--json",
                            "--cache-dir", str(folder_cache)).stdout)
    assert doc["query"] == {"id": 0, "label": "cat", "class_index": 0, "path": "cat/img00.jpg"}
    assert all(r["path"].split("/")[0] in ("cat", "dog", "ship") for r in doc["results"])
    assert "dog/broken.jpg" not in [r["path"] for r in doc["results"]]
    text = invoke("-q", "query", "--collection", "mine", "--image-id", "0", "-k", "2", "--cache-dir",
                  str(folder_cache)).stdout
    assert text.startswith("Query: image 0 (cat/img00.jpg) (label: cat)")
    assert re.match(r"\s+1\. image \d+ \(label: \w+\)  (cat|dog|ship)/img\d\d\.(jpg|png|webp|bmp)$", text.splitlines()[1])


def test_grid_server_and_evaluate_work_on_a_folder(folder_cache, tmp_path):
    png = tmp_path / "g.png"
    assert invoke("-q", "query", "--collection", "mine", "--image-id", "3", "--png", str(png),
                  "--cache-dir", str(folder_cache)).exit_code == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    report = json.loads(invoke("-q", "evaluate", "--collection", "mine", "-k", "5", "--json",
                               "--cache-dir", str(folder_cache)).stdout)
    assert report["n"] == 24 and report["methods"][-1]["name"] == "exact"
    pytest.importorskip("fastapi")
    from served import local_client

    from stl10_similarity.params import ServeParams
    from stl10_similarity.server import create_app

    with local_client(create_app(folder_cache / "collections" / "mine", ServeParams())) as client:
        assert client.get("/api/v1/images/0").json()["path"] == "cat/img00.jpg"
        assert client.get("/api/v1/images", params={"label": "ship"}).json()["total"] == 8
        assert client.get("/api/v1/images/5/image.png").status_code == 200
        search = client.get("/api/v1/search", params={"image_id": 0}).json()
        assert all("path" in r for r in search["results"])


def test_collections_are_listed_and_kept_apart(folder_cache, archive, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(folder_cache, cache)
    # only a collection of one's own so far: a query without --collection names it instead of asking for STL-10
    lost = CliRunner().invoke(main, ["query", "--image-id", "0", "--cache-dir", str(cache)])
    assert lost.exit_code == 2 and "the collections there are mine: give --collection NAME" in lost.stderr
    assert invoke("-q", "download", "--archive", str(archive), "--no-verify", "--cache-dir", str(cache)).exit_code == 0
    assert invoke("-q", "extract", *FAST, "--cache-dir", str(cache)).exit_code == 0
    rows = [json.loads(line) for line in invoke("collections", "--json", "--cache-dir", str(cache)).stdout.splitlines()]
    assert [(r["name"], r["images"], r["skipped"]) for r in rows] == [("stl10", 100, 0), ("mine", 24, 1)]
    assert rows[0]["index"] == "missing" and rows[1]["source"].startswith("folder ")
    stl10 = json.loads(invoke("-q", "query", "--image-id", "0", "--json", "--cache-dir", str(cache)).stdout)
    assert "path" not in stl10["query"] and stl10["params"]["n"] == 100
    text = invoke("collections", "--cache-dir", str(cache)).stdout
    assert text.splitlines()[0].startswith("stl10") and "index current" in text.splitlines()[0]


@pytest.mark.parametrize("args, message", [
    (["extract", "--images", "."], "--images makes a collection of your own"),
    (["extract", "--collection", "new", *FAST], "give its folder with --images DIR"),
    (["extract", "--images", ".", "--collection", "new", "--limit", "5"], "--split and --limit are for STL-10"),
    (["query", "--collection", "../x", "--image-id", "0"], "--collection '../x' is not a collection name"),
    (["query", "--collection", "nothing", "--image-id", "0"], "there is no collection 'nothing'"),
])
def test_collection_mistakes_exit_2_with_one_line(args, message, tmp_path):
    result = CliRunner().invoke(main, [*args, "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_a_folder_with_no_images_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["extract", "--images", str(tmp_path / "empty"), "--collection", "e", *FAST,
                                       "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2 and "holds no images (.jpg, .jpeg, .png" in result.stderr


def test_a_file_name_that_is_not_utf8_is_skipped_with_a_warning(tmp_path):
    import os

    root = tmp_path / "photos"
    images = make_images(np.arange(3), seed=2)
    _save(images[0], root / "a.png")
    _save(images[1], root / "b.png")
    bad = os.fsencode(root) + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    with open(bad, "wb") as handle:
        handle.write((root / "a.png").read_bytes())
    result = CliRunner().invoke(main, ["extract", "--images", str(root), "--collection", "mine", *FAST,
                                       "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("2 new, 0 changed, 0 removed, 0 unchanged: 2 images")
    assert r"warning: skipped caf\xe9.png: its name is not valid UTF-8" in result.stderr
    assert "skipped 1 file(s)" in result.stderr
    rerun = CliRunner().invoke(main, ["extract", "--images", str(root), "--collection", "mine", *FAST,
                                      "--cache-dir", str(tmp_path / "c")])
    assert rerun.exit_code == 0 and r"caf\xe9.png" in rerun.stderr  # still said, every time, until renamed
    doc = json.loads(invoke("-q", "query", "--collection", "mine", "--image-id", "0", "-k", "1", "--json",
                            "--cache-dir", str(tmp_path / "c")).stdout)
    assert doc["results"][0]["path"] == "b.png"


def test_an_uploaded_or_queried_file_embeds_exactly_as_in_its_folder(tmp_path):
    """One decoder: EXIF orientation and the same square for folders, `query --image` and uploads."""
    from PIL import Image

    root = tmp_path / "photos"
    for i, image in enumerate(make_images(np.arange(6), seed=8)):
        _save(image, root / f"img{i}.png")
    img = Image.fromarray(make_images(np.array([4]), seed=9)[0].transpose(1, 2, 0)).resize((160, 100))
    exif = img.getexif()
    exif[0x0112] = 6
    turned = root / "turned.jpg"
    img.save(turned, exif=exif, quality=92)
    cache = tmp_path / "c"
    assert invoke("-q", "extract", "--images", str(root), "--collection", "mine", *FAST,
                  "--cache-dir", str(cache)).exit_code == 0
    doc = json.loads(invoke("-q", "query", "--collection", "mine", "--image", str(turned), "-k", "1", "--method",
                            "exact", "--json", "--cache-dir", str(cache)).stdout)
    assert doc["results"][0]["path"] == "turned.jpg" and doc["results"][0]["cosine"] == pytest.approx(1.0, abs=1e-6)
    pytest.importorskip("fastapi")
    from served import local_client

    from stl10_similarity.params import ServeParams
    from stl10_similarity.server import create_app

    with local_client(create_app(cache / "collections" / "mine", ServeParams())) as client:
        found = client.post("/api/v1/search", files={"image": ("t.jpg", turned.read_bytes(), "image/jpeg")},
                            data={"k": "1", "method": "exact"}).json()
    assert found["results"][0]["path"] == "turned.jpg"
    assert found["results"][0]["cosine"] == pytest.approx(1.0, abs=1e-6)


def test_the_server_serves_folder_images_as_indexed(tmp_path):
    """A file that vanished or changed since extraction: 410 JSON, never a black 200; the ETag follows the file."""
    import hashlib

    pytest.importorskip("fastapi")
    from served import local_client

    from stl10_similarity.params import ServeParams
    from stl10_similarity.server import create_app

    root = tmp_path / "photos"
    images = make_images(np.arange(4), seed=6)
    for i, image in enumerate(images):
        _save(image, root / f"img{i}.png")
    cache = tmp_path / "c"
    assert invoke("-q", "extract", "--images", str(root), "--collection", "mine", *FAST,
                  "--cache-dir", str(cache)).exit_code == 0
    with local_client(create_app(cache / "collections" / "mine", ServeParams())) as client:
        first = client.get("/api/v1/images/1/image.png")
        assert first.status_code == 200
        assert first.headers["etag"] == f'"{hashlib.sha256((root / "img1.png").read_bytes()).hexdigest()[:32]}"'
        assert client.get("/api/v1/images/1/image.png",
                          headers={"if-none-match": first.headers["etag"]}).status_code == 304
        (root / "img1.png").unlink()
        gone = client.get("/api/v1/images/1/image.png")
        assert gone.status_code == 410 and "img1.png is gone" in gone.json()["error"]["message"]
        (root / "img2.png").write_bytes(b"garbage, not a PNG")
        assert client.get("/api/v1/images/2/image.png").status_code == 410
        _save(images[0], root / "img3.png")  # a valid image, but not the one indexed
        replaced = client.get("/api/v1/images/3/image.png")
        assert replaced.status_code == 410 and "changed since it was indexed" in replaced.json()["error"]["message"]
        assert client.get("/api/v1/images/0/image.png").status_code == 200
        assert client.get("/api/v1/health").status_code == 200


@pytest.mark.slow
def test_only_regular_files_inside_the_folder_are_read_and_every_skip_is_said(tmp_path):
    """A FIFO would hang a read forever and /dev/zero never end; symlinks may loop, dangle or lead out of the
    folder. None is opened as an image; each is named in a warning and counted; a link inside the folder is kept."""
    import os
    import subprocess
    import sys

    root, outside = tmp_path / "photos", tmp_path / "elsewhere"
    images = make_images(np.arange(4) % 2, seed=3)
    for i in range(3):
        _save(images[i], root / f"img{i}.png")
    _save(images[3], outside / "secret.png")
    os.mkfifo(root / "x.jpg")
    os.symlink("/dev/zero", root / "zero.png")
    os.symlink(root / "nothing.png", root / "gone.png")
    os.symlink(root / "loop.png", root / "loop.png")
    os.symlink(outside / "secret.png", root / "out.png")
    os.symlink(outside, root / "linked")
    os.symlink(root / "img0.png", root / "inside.png")
    result = subprocess.run([sys.executable, "-m", "stl10_similarity", "extract", "--images", str(root),
                             "--collection", "mine", *FAST, "--cache-dir", str(tmp_path / "c")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "4 new, 0 changed, 0 removed, 0 unchanged" in result.stdout
    for name, why in (("x.jpg", "not a regular file"), ("zero.png", "(not a regular file|outside the folder)"),
                      ("gone.png", "dangling"),
                      ("loop.png", "loop"), ("out.png", "outside the folder"), ("linked", "symlinked folder")):
        assert re.search(rf"warning: skipped {re.escape(name)}: .*{why}", result.stderr), (name, result.stderr)
    assert "skipped 6 file(s)" in result.stderr
    keys = json.loads(invoke("-q", "query", "--collection", "mine", "--image-id", "0", "-k", "3", "--json",
                             "--cache-dir", str(tmp_path / "c")).stdout)
    assert {r["path"] for r in keys["results"]} <= {"img0.png", "img1.png", "img2.png", "inside.png"}


def test_a_fifo_in_place_of_an_indexed_file_is_refused_not_waited_for(tmp_path):
    pytest.importorskip("fastapi")
    import os
    import time
    import urllib.error
    import urllib.request

    from served import served

    from stl10_similarity.server import create_app

    root = tmp_path / "photos"
    for i, image in enumerate(make_images(np.arange(3), seed=2)):
        _save(image, root / f"img{i}.png")
    assert invoke("-q", "extract", "--images", str(root), "--collection", "mine", *FAST, "--cache-dir",
                  str(tmp_path / "c")).exit_code == 0
    with served(lambda params: create_app(tmp_path / "c" / "collections" / "mine", params),
                max_concurrent=2) as (port, _):
        (root / "img1.png").unlink()
        os.mkfifo(root / "img1.png")
        started = time.monotonic()
        for _ in range(4):  # more than the worker slots: none is held by a read that waits for a writer
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/images/0/image.png", timeout=10) as ok:
                assert ok.status == 200
            with pytest.raises(urllib.error.HTTPError) as gone:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/images/1/image.png", timeout=10)
            assert gone.value.code == 410
        assert time.monotonic() - started < 10
    with pytest.raises(Exception, match="not a regular file"):
        decode_square(root / "img1.png", 32)


def test_file_names_are_shown_escaped_on_a_terminal_and_kept_in_json(tmp_path):
    """A name can hold an escape sequence (set the title, clear the screen) or a newline (forge a result line):
    text output shows them as visible escapes; JSON keeps the real name."""
    root = tmp_path / "photos"
    evil, forged = "evil\x1b]0;PWNED\x07\x1b[2J.png", "two\n  9. image 9 (label: forged).png"
    images = make_images(np.arange(3), seed=6)
    for name, image in zip((evil, forged, "plain.png"), images):
        _save(image, root / name)
    cache = str(tmp_path / "c")
    assert invoke("-q", "extract", "--images", str(root), "--collection", "mine", *FAST, "--cache-dir",
                  cache).exit_code == 0
    doc = json.loads(invoke("-q", "query", "--collection", "mine", "--image-id", "1", "-k", "2", "--json",
                            "--cache-dir", cache).stdout)
    assert {r["path"] for r in doc["results"]} == {evil, forged}
    text = invoke("-q", "query", "--collection", "mine", "--image-id", "1", "-k", "2", "--cache-dir", cache).stdout
    assert "\x1b" not in text and "\x07" not in text and "\\x1b]0;PWNED\\x07\\x1b[2J" in text
    assert "two\\n  9. image 9" in text and not any(line.startswith("  9. image 9") for line in text.splitlines())
    (root / "copy.png").write_bytes((root / evil).read_bytes())
    assert invoke("-q", "extract", "--images", str(root), "--collection", "mine", "--cache-dir", cache).exit_code == 0
    duplicates = invoke("-q", "duplicates", "--collection", "mine", "--cache-dir", cache).stdout
    assert "\x1b" not in duplicates and "\\x1b" in duplicates


def test_an_interrupted_first_extract_is_listed_with_its_own_command(tmp_path):
    (tmp_path / "c" / "collections" / "half" / "features" / "partial").mkdir(parents=True)  # killed before a commit
    text = CliRunner().invoke(main, ["collections", "--cache-dir", str(tmp_path / "c")]).stdout
    assert text.startswith("half") and "`stl10sim extract --images DIR --collection half` makes them" in text
    assert "`stl10sim extract`" not in text.replace("`stl10sim extract --images", "")  # not STL-10's command
