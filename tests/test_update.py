"""Folder collections kept up to date: only new and changed files embedded, ids kept and never reused, the index
updated in place with the answers of a full rebuild, and a killed update loses nothing already embedded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import invoke
from stl10_fixture import make_images

from stl10_similarity.cli import main
from stl10_similarity.index import build_index, index_in_memory, load_index
from stl10_similarity.index.forest import BandCodes, prefix_arrays
from stl10_similarity.params import IndexParams
from stl10_similarity.search import Searcher

FAST = ["--weights", "none", "--image-size", "64", "--batch-size", "8"]
CLASSES = ["cat", "dog", "ship"]


def _save(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0))).save(path)


def _photos(root: Path, n: int, seed: int, start: int = 0) -> list[str]:
    labels = np.arange(n) % 3
    names = []
    for i, image in enumerate(make_images(labels, seed=seed)):
        name = f"{CLASSES[labels[i]]}/img{start + i:03d}.png"
        _save(image, root / name)
        names.append(name)
    return names


def _extract(root: Path, cache: Path, *options: str):
    result = CliRunner().invoke(main, ["extract", "--images", str(root), "--collection", "mine", *(options or FAST),
                                       "--cache-dir", str(cache)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _collection(cache: Path) -> dict[str, np.ndarray]:
    folder = cache / "collections" / "mine" / "features"
    return {name: np.load(folder / f"{name}.npy") for name in ("features", "ids", "keys", "versions")}


def _id_by_path(cache: Path) -> dict[str, int]:
    c = _collection(cache)
    return {str(k): int(i) for k, i in zip(c["keys"], c["ids"])}


@pytest.fixture()
def updated(tmp_path) -> tuple[Path, Path, dict[str, int]]:
    """30 photos extracted and indexed; then 5 added, 2 changed, 1 touched (same bytes) and 3 removed."""
    root, cache = tmp_path / "photos", tmp_path / "cache"
    names = _photos(root, 30, seed=1)
    _extract(root, cache)
    assert invoke("-q", "index", "--collection", "mine", "--cache-dir", str(cache)).exit_code == 0
    before = _id_by_path(cache)
    _photos(root, 5, seed=2, start=100)
    for name, image in zip(names[3:5], make_images(np.array([2, 2]), seed=3)):
        _save(image, root / name)  # new content under the same path
    os.utime(root / names[6], ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same content
    for name in (names[0], names[10], names[29]):
        (root / name).unlink()
    return root, cache, before


def test_update_embeds_only_new_and_changed_files_and_keeps_ids(updated, tmp_path):
    root, cache, before = updated
    result = _extract(root, cache)
    assert result.stdout.startswith("5 new, 2 changed, 3 removed, 25 unchanged: 32 images")
    after = _id_by_path(cache)
    gone = {"cat/img000.png", "dog/img010.png", "ship/img029.png"}
    assert {p: i for p, i in before.items() if p not in gone} == {p: after[p] for p in before if p not in gone}
    assert sorted(i for p, i in after.items() if p not in before) == [30, 31, 32, 33, 34]  # next ids, none reused
    c = _collection(cache)
    rewritten = {str(k) for k, v in zip(c["keys"], c["versions"]) if v == 2}
    assert rewritten == {p for p in after if p not in before} | {"dog/img004.png", "cat/img003.png"}
    # every image's features are those a fresh extraction of today's folder computes
    fresh = tmp_path / "fresh"
    _extract(root, fresh)
    f = _collection(fresh)
    row = {str(k): r for r, k in enumerate(f["keys"])}
    assert np.allclose(c["features"], f["features"][[row[str(k)] for k in c["keys"]]], atol=1e-5)
    # every image's recorded SHA-256 is its file's (hashed from the bytes that were decoded)
    digests = np.load(cache / "collections" / "mine" / "features" / "digests.npy")
    assert [bytes(d) for d in digests] == [hashlib.sha256((root / str(k)).read_bytes()).digest() for k in c["keys"]]
    # unchanged again: nothing to do
    assert _extract(root, cache).stdout.startswith("0 new, 0 changed, 0 removed, 32 unchanged: 32 images")


def test_removed_ids_are_refused_and_never_given_again(updated):
    root, cache, before = updated
    _extract(root, cache)
    gone = CliRunner().invoke(main, ["query", "--collection", "mine", "--image-id", "29", "--cache-dir", str(cache)])
    assert gone.exit_code == 2 and "--image-id 29 is not in the collection" in gone.stderr
    doc = json.loads(invoke("-q", "query", "--collection", "mine", "--image-id", "34", "-k", "3", "--json",
                            "--cache-dir", str(cache)).stdout)
    assert doc["query"]["id"] == 34 and doc["query"]["path"] == "ship/img102.png"  # new ids in path order
    assert all(r["id"] not in (0, 13, 29) for r in doc["results"])  # the removed images
    report = json.loads(invoke("-q", "evaluate", "--collection", "mine", "-k", "3", "--json",
                               "--cache-dir", str(cache)).stdout)
    assert report["n"] == 32 and all(m["recall_vs_cosine"] == 1.0 for m in report["methods"] if m["name"] == "exact")
    shutil.copy(root / "dog/img004.png", root / "dog/copy.png")  # a duplicate pair across the id gaps
    _extract(root, cache)
    groups = [json.loads(line) for line in invoke("-q", "duplicates", "--collection", "mine", "--json", "--kind",
                                                  "exact", "--cache-dir", str(cache)).stdout.splitlines()]
    assert [(g["ids"], g["paths"]) for g in groups] == [([11, 35], ["dog/img004.png", "dog/copy.png"])]
    (root / "dog/copy.png").unlink()
    _extract(root, cache)
    pytest.importorskip("fastapi")
    from served import local_client

    from stl10_similarity.params import ServeParams
    from stl10_similarity.server import create_app

    with local_client(create_app(cache / "collections" / "mine", ServeParams())) as client:
        page = client.get("/api/v1/images", params={"limit": 100}).json()
        listed = [image["id"] for image in page["images"]]
        assert page["total"] == 32 and listed == sorted(set(range(35)) - {0, 13, 29})
        missing = client.get("/api/v1/images/29")
        assert missing.status_code == 404 and "removed from its folder" in missing.json()["error"]["message"]
        assert client.get("/api/v1/images/34/image.png").status_code == 200
        assert client.get("/api/v1/search", params={"image_id": 34}).json()["query"]["path"] == "ship/img102.png"
    (root / "ship/img102.png").unlink()  # the newest image goes; the next new one still gets a new id
    _photos(root, 1, seed=9, start=200)
    # no model options: the update embeds as the collection was (--weights none, 64 px), not with the defaults
    assert _extract(root, cache, "--batch-size", "8").stdout.startswith("1 new, 0 changed, 1 removed, 31 unchanged")
    assert _id_by_path(cache)["cat/img200.png"] == 36  # 35 was the copy's, removed above


def test_index_follows_an_update_with_the_answers_of_a_full_rebuild(updated):
    root, cache, _ = updated
    _extract(root, cache)
    home = cache / "collections" / "mine"
    stats = np.load(home / "index" / "stats.npy")
    centroids = np.load(home / "index" / "vocabulary.npy")
    built = invoke("index", "--collection", "mine", "--cache-dir", str(cache))
    assert "index of 32 images" in built.stdout and "updated in place" in built.stdout
    index = load_index(home)
    assert np.array_equal(index.vocabulary, centroids)  # an update keeps the learned centroids
    # the same sets, trees and answers as a build from scratch over today's features with the frozen statistics
    # and centroids
    scratch = index_in_memory(np.asarray(index.features), np.asarray(index.labels), index.class_names,
                              IndexParams(), stats=stats, vocabulary=centroids)
    assert np.array_equal(index.sets, scratch.sets) and np.array_equal(index.topk, scratch.topk)
    assert np.array_equal(index.topk_bits, scratch.topk_bits)
    assert np.array_equal(index.signatures, scratch.signatures)
    trees = IndexParams().trees
    keys, order = prefix_arrays(np.asarray(index.signatures), trees, BandCodes.for_table(index.token_table, trees))
    assert index.tree_keys.dtype == np.uint64  # the default index stores its bands as codes
    assert np.array_equal(index.tree_keys, keys) and np.array_equal(index.tree_order, order)
    scratch.ids = index.ids
    for method in ("rerank", "forest", "exact"):
        for row in range(index.n):
            got = Searcher(index).query(Searcher(index).for_row(row), 5, method)
            want = Searcher(scratch).query(Searcher(scratch).for_row(row), 5, method)
            assert [m.id for m in got.results] == [m.id for m in want.results], (method, row)
    # a query through the CLI finds a new image by its own id
    doc = json.loads(invoke("-q", "query", "--collection", "mine", "--image-id", "30", "-k", "31", "--json",
                            "--method", "exact", "--cache-dir", str(cache)).stdout)
    assert doc["query"]["path"] == "cat/img100.png" and len(doc["results"]) == 31
    # --force starts over: new statistics and centroids, a full build
    rebuilt = build_index(home, force=True).manifest
    assert rebuilt["updated"] is False and rebuilt["vocabulary"]["fitted_on"] == 32


@pytest.mark.slow
def test_a_killed_update_resumes_without_losing_embedded_chunks(tmp_path):
    root, cache = tmp_path / "photos", tmp_path / "cache"
    args = [sys.executable, "-m", "stl10_similarity", "-q", "extract", "--images", str(root), "--collection", "mine",
            "--weights", "none", "--image-size", "128", "--batch-size", "4", "--chunk-size", "4", "--cache-dir"]
    _photos(root, 6, seed=1)
    subprocess.run([*args, str(cache)], check=True, capture_output=True)
    clean = tmp_path / "clean"
    shutil.copytree(cache, clean)
    _photos(root, 48, seed=4, start=100)
    partial = cache / "collections" / "mine" / "features" / "partial"
    proc = subprocess.Popen([*args, str(cache)], stderr=subprocess.DEVNULL)
    try:
        end = time.time() + 120
        while len(list(partial.glob("chunk_*.npy"))) < 3 and time.time() < end:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = len(list(partial.glob("chunk_*.npy")))
    assert 3 <= done < 12
    assert _collection(cache)["ids"].tolist() == list(range(6))  # the collection before the update is intact
    resumed = subprocess.run([*args, str(cache)], capture_output=True, text=True)
    assert resumed.returncode == 0 and resumed.stdout.startswith("48 new, 0 changed, 0 removed, 6 unchanged")
    assert f"resumed after {done} chunks" in resumed.stdout and not partial.exists()
    subprocess.run([*args, str(clean)], check=True, capture_output=True)  # the same update, never killed
    a, b = _collection(cache), _collection(clean)
    assert all(np.array_equal(a[name], b[name]) for name in a)  # bit-identical


def test_other_model_options_embed_everything_again_and_say_so(tmp_path):
    root, cache = tmp_path / "photos", tmp_path / "cache"
    _photos(root, 6, seed=1)
    _extract(root, cache)
    again = _extract(root, cache, "--weights", "none", "--image-size", "96", "--batch-size", "8")
    assert again.stdout.startswith("6 new, 0 changed, 0 removed, 0 unchanged")
    assert "embedding every image again (ids start over)" in again.stderr


def test_an_update_says_when_the_collection_outgrew_its_centroids(tmp_path):
    root, cache = tmp_path / "photos", tmp_path / "cache"
    _photos(root, 6, seed=1)
    _extract(root, cache)
    assert invoke("-q", "index", "--collection", "mine", "--cache-dir", str(cache)).exit_code == 0
    _photos(root, 12, seed=2, start=100)  # 6 -> 18 images: 3x, not yet outgrown
    _extract(root, cache)
    grown = CliRunner().invoke(main, ["index", "--collection", "mine", "--cache-dir", str(cache)])
    assert grown.exit_code == 0 and "updated in place" in grown.stdout and "index --force" not in grown.stderr
    _photos(root, 12, seed=3, start=200)  # 30 images: over 4x the 6 the centroids were learned on
    _extract(root, cache)
    outgrown = CliRunner().invoke(main, ["index", "--collection", "mine", "--cache-dir", str(cache)])
    assert outgrown.exit_code == 0 and "updated in place" in outgrown.stdout
    assert "over 4x the 6 its set vocabulary was fitted on: `stl10sim index --force` fits it again" in outgrown.stderr
    refit = CliRunner().invoke(main, ["index", "--force", "--collection", "mine", "--cache-dir", str(cache)])
    assert refit.exit_code == 0 and load_index(cache / "collections" / "mine").params["vocabulary"]["fitted_on"] == 30


def test_a_served_collection_keeps_answering_across_an_update_on_disk(tmp_path):
    """`extract` on a folder that is being served: the server answers from the collection it opened; images of
    unchanged files keep being served, a changed file's image is 410 (not a 400 naming the cache)."""
    pytest.importorskip("fastapi")
    from served import local_client

    from stl10_similarity.params import ServeParams
    from stl10_similarity.server import create_app

    root, cache = tmp_path / "photos", tmp_path / "cache"
    names = _photos(root, 9, seed=4)
    _extract(root, cache)
    ids = _id_by_path(cache)
    with local_client(create_app(cache / "collections" / "mine", ServeParams())) as client:
        before = client.get("/api/v1/images/1/image.png")
        assert before.status_code == 200
        changed = names[2]
        _save(make_images(np.array([0]), seed=77)[0], root / changed)
        _photos(root, 2, seed=5, start=50)
        assert _extract(root, cache).stdout.startswith("2 new, 1 changed, 0 removed, 8 unchanged")
        again = client.get("/api/v1/images/1/image.png")
        assert again.status_code == 200 and again.content == before.content
        gone = client.get(f"/api/v1/images/{ids[changed]}/image.png")
        assert gone.status_code == 410 and str(cache) not in gone.text and str(root) not in gone.text
        assert client.get("/api/v1/health").json()["newer_index_on_disk"] is True
        assert client.get("/api/v1/search", params={"image_id": 1, "k": 3}).status_code == 200
