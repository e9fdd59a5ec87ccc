"""`stl10sim import`: features made elsewhere become a collection that index, query, evaluate, duplicates and
serve work on; bad arrays exit 2 with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from stl10_similarity.cli import main
from stl10_similarity.synthetic import synthetic_features


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def exported(tmp_path):
    """400 synthetic features in float16 (not unit length), their labels, class names and paths."""
    feats, clusters = synthetic_features(400, seed=3)
    raw = (feats * 7.5).astype(np.float16)
    np.save(tmp_path / "f.npy", raw)
    np.save(tmp_path / "labels.npy", (clusters % 4).astype(np.int64))
    (tmp_path / "classes.txt").write_text("alpha\nbeta\ngamma\ndelta\n")
    (tmp_path / "paths.txt").write_text("".join(f"shard{i // 100}/img{i:04d}.jpg\n" for i in range(400)))
    return tmp_path, raw


def test_an_imported_collection_works_like_any_other(exported, tmp_path):
    folder, raw = exported
    cache = str(tmp_path / "c")
    result = _run("import", "--features", str(folder / "f.npy"), "--collection", "ext", "--labels",
                  str(folder / "labels.npy"), "--class-names", str(folder / "classes.txt"), "--paths",
                  str(folder / "paths.txt"), "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("imported 400 feature rows into collection ext")
    stored = np.load(tmp_path / "c" / "collections" / "ext" / "features" / "features.npy")
    expected = raw.astype(np.float32) / np.linalg.norm(raw.astype(np.float32), axis=1, keepdims=True)
    assert stored.dtype == np.float32 and np.allclose(stored, expected, atol=1e-6)
    doc = json.loads(_run("-q", "query", "--collection", "ext", "--image-id", "42", "-k", "3", "--json",
                          "--method", "exact", "--cache-dir", cache).stdout)
    assert doc["query"]["path"] == "shard0/img0042.jpg" and doc["query"]["label"] in ("alpha", "beta", "gamma", "delta")
    exact = np.argsort(-(expected @ expected[42]), kind="stable")[1:4]
    assert [r["id"] for r in doc["results"]] == exact.tolist()
    assert _run("-q", "index", "--collection", "ext", "--cache-dir", cache).exit_code == 0
    report = json.loads(_run("-q", "evaluate", "--collection", "ext", "--queries", "50", "--json",
                             "--cache-dir", cache).stdout)
    assert report["n"] == 400
    assert _run("-q", "duplicates", "--collection", "ext", "--cache-dir", cache).exit_code == 0
    assert _run("verify", "--collection", "ext", "--cache-dir", cache).exit_code == 0
    listed = _run("collections", "--cache-dir", cache).stdout
    assert "ext" in listed and "imported from" in listed
    # no images: one clear line, exit 2
    grid = _run("query", "--collection", "ext", "--image-id", "1", "--png", str(tmp_path / "g.png"), "--cache-dir", cache)
    assert grid.exit_code == 2 and "holds no images" in grid.stderr
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (9, 99, 199)).save(photo)
    by_image = _run("query", "--collection", "ext", "--image", str(photo), "--cache-dir", cache)
    assert by_image.exit_code == 2 and "--weights" in by_image.stderr and "imported without the model" in by_image.stderr
    pytest.importorskip("fastapi")
    from served import local_client

    from stl10_similarity.params import ServeParams
    from stl10_similarity.server import create_app

    with local_client(create_app(tmp_path / "c" / "collections" / "ext", ServeParams())) as client:
        assert client.get("/api/v1/search", params={"image_id": 42, "k": 3, "method": "exact"}).json()["results"] \
            == doc["results"]
        assert client.get("/api/v1/images/3/image.png").status_code == 404


def test_an_import_with_its_weights_can_be_queried_by_image(tmp_path):
    """Features from this model (here: random weights) imported with --weights: an image embeds like them."""
    from PIL import Image
    from stl10_fixture import make_images

    root = tmp_path / "photos"
    root.mkdir()
    for i, image in enumerate(make_images(np.arange(20) % 4, seed=1)):
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(root / f"{i:02d}.png")
    cache = str(tmp_path / "c")
    # fp32 pinned: on a CPU with bfloat16 `auto` embeds in bf16, whose kernels differ between a batch of 20 and a
    # batch of 1 (cosine 0.99995, not 1 +- 1e-5); what bf16 keeps is test_features' fidelity test
    assert _run("-q", "extract", "--images", str(root), "--collection", "made", "--weights", "none", "--image-size",
                "64", "--precision", "fp32", "--cache-dir", cache).exit_code == 0
    made = tmp_path / "c" / "collections" / "made" / "features" / "features.npy"
    result = _run("import", "--features", str(made), "--collection", "moved", "--weights", "none", "--image-size",
                  "64", "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    doc = json.loads(_run("-q", "query", "--collection", "moved", "--image", str(root / "07.png"), "-k", "1",
                          "--method", "exact", "--json", "--cache-dir", cache).stdout)
    assert doc["results"][0]["id"] == 7 and doc["results"][0]["cosine"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda: np.zeros((10, 1280), np.float32), "row 0 is all zeros"),
    (lambda: np.full((10, 1280), np.nan, np.float32), "row 0 holds NaN"),
    (lambda: np.ones((10, 64), np.float32), "must be (N, 1280)"),
    (lambda: np.ones((10, 1280), np.float64), "must be float32 or float16"),
    (lambda: np.ones(1280, np.float32), "must be (N, 1280)"),
])
def test_bad_feature_arrays_exit_2_with_one_line(tmp_path, make, message):
    np.save(tmp_path / "bad.npy", make())
    result = _run("import", "--features", str(tmp_path / "bad.npy"), "--collection", "x", "--cache-dir", str(tmp_path / "c"))
    assert result.exit_code == 2 and message in result.stderr and "--features" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    listed = _run("collections", "--json", "--cache-dir", str(tmp_path / "c")).stdout.splitlines()
    assert "x" not in [json.loads(line)["name"] for line in listed]


def test_labels_names_and_paths_must_fit(exported, tmp_path):
    folder, _ = exported
    np.save(folder / "short.npy", np.zeros(10, np.int64))
    (folder / "two.txt").write_text("a\nb\n")
    (folder / "few.txt").write_text("a\n")
    base = ["import", "--features", str(folder / "f.npy"), "--collection", "x", "--cache-dir", str(tmp_path / "c")]
    for extra, message in ((["--labels", str(folder / "short.npy")], "must be (400,) integers"),
                           (["--labels", str(folder / "labels.npy"), "--class-names", str(folder / "two.txt")],
                            "names 2 classes"),
                           (["--paths", str(folder / "few.txt")], "has 1 lines"),
                           (["--class-names", str(folder / "two.txt")], "give the labels too")):
        result = _run(*base, *extra)
        assert result.exit_code == 2 and message in result.stderr, (extra, result.output)
    assert _run(*base).exit_code == 0
    again = _run(*base)
    assert again.exit_code == 2 and "holds a collection already" in again.stderr and "--force" in again.stderr
    assert _run(*base, "--force").exit_code == 0


def test_extreme_rows_labels_and_names_are_handled_not_garbled(tmp_path):
    """Finite values near float32's limits normalise to unit rows (not 0 or NaN); a label of 10**9 is refused at
    once (not after making 10**9 class names); a path holding U+2028 or a form feed stays one path."""
    import time

    feats, _ = synthetic_features(30, seed=4)
    feats = feats.astype(np.float32)
    feats[3] = np.full(1280, 3e38, np.float32)
    feats[4] = feats[5] * np.float32(1e-30)
    np.save(tmp_path / "f.npy", feats)
    names = [f"img{i}.jpg" for i in range(30)]
    names[2] = "odd\u2028name\x0c.jpg"
    (tmp_path / "paths.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    cache = str(tmp_path / "c")
    result = _run("import", "--features", str(tmp_path / "f.npy"), "--paths", str(tmp_path / "paths.txt"),
                  "--collection", "x", "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    stored = np.load(tmp_path / "c" / "collections" / "x" / "features" / "features.npy")
    assert np.allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)
    assert np.allclose(stored[3], 1 / np.sqrt(1280), atol=1e-6) and stored[4] @ stored[5] > 0.9999
    keys = np.load(tmp_path / "c" / "collections" / "x" / "features" / "keys.npy")
    assert [str(k) for k in keys] == names
    labels = np.zeros(30, np.int64)
    labels[7] = 10**9
    np.save(tmp_path / "huge.npy", labels)
    started = time.monotonic()
    refused = _run("import", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "huge.npy"),
                   "--collection", "y", "--cache-dir", cache)
    assert refused.exit_code == 2 and "at most 32,767 classes" in refused.stderr
    assert time.monotonic() - started < 5


def test_a_class_named_unlabeled_can_be_filtered(tmp_path):
    pytest.importorskip("fastapi")
    from served import local_client

    from stl10_similarity.params import ServeParams
    from stl10_similarity.server import create_app

    feats, _ = synthetic_features(40, seed=5)
    np.save(tmp_path / "f.npy", feats.astype(np.float32))
    labels = np.array([i % 2 for i in range(38)] + [-1, -1], np.int64)
    np.save(tmp_path / "labels.npy", labels)
    (tmp_path / "classes.txt").write_text("cat\nunlabeled\n")
    assert _run("import", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "labels.npy"),
                "--class-names", str(tmp_path / "classes.txt"), "--collection", "u",
                "--cache-dir", str(tmp_path / "c")).exit_code == 0
    with local_client(create_app(tmp_path / "c" / "collections" / "u", ServeParams())) as client:
        page = client.get("/api/v1/images", params={"label": "unlabeled", "limit": 100}).json()
    assert page["total"] == 19 and {image["class_index"] for image in page["images"]} == {1}
