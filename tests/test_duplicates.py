"""`stl10sim duplicates`: exact, near and similar groups from forest candidates (never all pairs), the kept image,
and moves that put every file back byte-identical, however they end."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke

from stl10_similarity.duplicates import find_duplicates, move_files, planned_moves, undo_moves
from stl10_similarity.duplicates.groups import Facts, components, keep_order
from stl10_similarity.duplicates.pairs import MAX_RUN, candidate_pairs, duplicate_trees, prefix_runs
from stl10_similarity.duplicates.pixels import pixel_similarity, thumbnails
from stl10_similarity.index import index_in_memory
from stl10_similarity.params import DuplicatesParams, IndexParams

FAST = ["--weights", "none", "--image-size", "64", "--batch-size", "16"]
NEAR_BY_COSINE = DuplicatesParams(kinds=("near",))  # no images: near pairs by the features' cosine


def _index(n: int = 600, copies: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.normal(size=(n, 1280))).astype(np.float32) ** 3
    x[n - copies :] = x[:copies] + rng.normal(0, 0.02, (copies, 1280)).astype(np.float32) * x[:copies]
    x = np.maximum(x, 0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return index_in_memory(x, np.full(n, -1, np.int16), [], IndexParams()), copies


def _photo(seed: int, side: int = 96) -> np.ndarray:
    """A smooth random picture (H, W, 3): distinct seeds give pictures that don't correlate."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_planted_copies_are_found_without_all_pairs():
    index, copies = _index(n=3000)
    forest = duplicate_trees(index)
    n, trees = index.n, forest[1].shape[0]

    def compared(max_run: int) -> int:  # pairs whose cosine is computed (a pair may be counted in several trees)
        return sum(len(m) * (len(m) - 1) // 2 for t in range(trees) for m in prefix_runs(forest[0][t], forest[1][t], max_run))

    assert compared(64) <= trees * n * (64 - 1) // 2  # linear in n: each image joins one small run per tree
    assert compared(64) < n * (n - 1) // 2 / 4
    assert compared(MAX_RUN) <= trees * n * (MAX_RUN - 1) // 2
    groups = find_duplicates(index, NEAR_BY_COSINE)
    assert {(i, n - copies + i) for i in range(copies)} <= {tuple(g.ids) for g in groups}
    for g in groups:
        vectors = np.asarray(index.features[g.ids])
        assert g.kind == "near" and g.min_cosine == pytest.approx(float((vectors @ vectors.T).min()), abs=1e-5)
        assert g.min_cosine >= NEAR_BY_COSINE.near_cosine


def test_candidates_are_each_images_nearest_run_mates():
    index, _ = _index(n=800, copies=40)
    pairs, cosines = candidate_pairs(index, 0.5, 3)
    assert (pairs[:, 0] < pairs[:, 1]).all() and len(np.unique(pairs, axis=0)) == len(pairs)
    features = np.asarray(index.features)
    assert np.allclose(cosines, np.einsum("md,md->m", features[pairs[:, 0]], features[pairs[:, 1]]), atol=1e-4)
    assert (cosines >= 0.5).all()
    per_image = np.bincount(pairs.ravel(), minlength=index.n)
    assert per_image.max() <= 3 * 2  # its own best 3, and being among the best 3 of others


def test_a_strict_threshold_finds_nothing_among_distinct_images():
    index, _ = _index(copies=1)
    assert find_duplicates(index, DuplicatesParams(kinds=("near",), near_cosine=0.9999)) == []


def test_components_join_chains_and_keep_singletons_out():
    pairs = np.array([[0, 5], [5, 9], [2, 3], [7, 8], [8, 2]])
    assert sorted(c.tolist() for c in components(10, pairs)) == [[0, 5, 9], [2, 3, 7, 8]]
    assert components(4, np.empty((0, 2), np.int64)) == []


def test_pixels_see_through_crops_brightness_and_resizing_but_not_other_pictures():
    from PIL import Image, ImageEnhance

    picture = Image.fromarray(_photo(1, 128))
    edits = [picture.crop((4, 4, 124, 124)), ImageEnhance.Brightness(picture).enhance(1.1),
             picture.resize((77, 77)), picture]
    others = [Image.fromarray(_photo(seed, 128)) for seed in range(2, 8)]

    def chw(img):
        return np.asarray(img.resize((64, 64)), np.uint8).transpose(2, 0, 1)

    thumbs = thumbnails(np.stack([chw(img) for img in [picture, *edits, *others]]))
    same = pixel_similarity(np.repeat(thumbs[:1], len(edits), 0), thumbs[1 : 1 + len(edits)])
    other = pixel_similarity(np.repeat(thumbs[:1], len(others), 0), thumbs[1 + len(edits) :])
    assert (same >= DuplicatesParams.near).all() and (other < DuplicatesParams.near).all()
    flat = thumbnails(np.full((1, 3, 64, 64), 128, np.uint8))
    assert not flat.any()  # a flat picture matches nothing, not everything


def test_keep_rules_order_images():
    big, small = Facts("b/x.jpg", 100, 10.0, [200, 200]), Facts("a/x.jpg", 500, 5.0, [100, 100])
    pick = {rule: min([(1, big), (2, small)], key=lambda m: keep_order(rule)(*m))[0]
            for rule in ("largest", "oldest", "newest", "prefer:a/", "prefer:b/")}
    assert pick == {"largest": 1, "oldest": 2, "newest": 1, "prefer:a/": 2, "prefer:b/": 1}
    same = Facts("long/name.jpg", 100, 1.0, [10, 10]), Facts("s.jpg", 100, 1.0, [10, 10])
    assert min([(5, same[0]), (6, same[1])], key=lambda m: keep_order("largest")(*m))[0] == 6  # shorter path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A folder of 16 distinct pictures and five planted copies of picture 0 and 1, extracted once."""
    from PIL import Image, ImageEnhance

    base = tmp_path_factory.mktemp("dups")
    folder = base / "photos"
    (folder / "originals").mkdir(parents=True)
    for i in range(16):
        Image.fromarray(_photo(100 + i)).save(folder / "originals" / f"p{i:02d}.png")
    original = Image.open(folder / "originals" / "p00.png").convert("RGB")
    (folder / "copies").mkdir()
    (folder / "copies" / "p00_same.png").write_bytes((folder / "originals" / "p00.png").read_bytes())
    original.save(folder / "copies" / "p00_q60.jpg", quality=60)
    original.resize((144, 144), Image.Resampling.BICUBIC).save(folder / "copies" / "p00_big.png")
    ImageEnhance.Brightness(Image.open(folder / "originals" / "p01.png").convert("RGB")).enhance(1.1).save(
        folder / "copies" / "p01_bright.png")
    cache = base / "cache"
    assert invoke("-q", "extract", "--images", str(folder), "--collection", "p", *FAST,
                  "--cache-dir", str(cache)).exit_code == 0
    return folder, cache


def _groups(cache: Path, *args: str) -> list[dict]:
    result = invoke("-q", "duplicates", "--collection", "p", "--json", *args, "--cache-dir", str(cache))
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_kinds_keep_exact_copies_apart_from_near_ones(planted):
    folder, cache = planted
    groups = _groups(cache)
    exact = [g for g in groups if g["kind"] == "exact"]
    near = [g for g in groups if g["kind"] == "near"]
    assert [sorted(g["paths"]) for g in exact] == [["copies/p00_same.png", "originals/p00.png"]]
    as_sets = [set(g["paths"]) for g in near]
    assert {"originals/p00.png", "copies/p00_same.png", "copies/p00_q60.jpg", "copies/p00_big.png"} in as_sets
    assert {"originals/p01.png", "copies/p01_bright.png"} in as_sets
    assert len(near) == 2  # the 14 other pictures are nobody's duplicates
    p00 = next(g for g in near if "copies/p00_big.png" in g["paths"])
    assert list(p00) == ["kind", "ids", "keep", "paths", "scores", "min_cosine", "bytes", "resolutions"]
    keep = p00["paths"][p00["ids"].index(p00["keep"])]
    assert keep == "copies/p00_big.png"  # the most pixels
    assert p00["resolutions"][p00["ids"].index(p00["keep"])] == [144, 144]
    assert p00["scores"][p00["ids"].index(p00["keep"])] == 1.0
    assert [g["kind"] for g in _groups(cache, "--kind", "exact")] == ["exact"]
    only_near = _groups(cache, "--kind", "near")
    assert all(g["kind"] == "near" for g in only_near) and len(only_near) == 2
    prefer = next(g for g in _groups(cache, "--keep", "prefer:originals/") if g["kind"] == "near"
                  and "copies/p00_big.png" in g["paths"])
    assert prefer["paths"][prefer["ids"].index(prefer["keep"])] == "originals/p00.png"


def test_csv_and_text_list_every_member(planted):
    _, cache = planted
    rows = list(csv.DictReader(io.StringIO(invoke("-q", "duplicates", "--collection", "p", "--csv",
                                                  "--cache-dir", str(cache)).stdout)))
    assert {r["kind"] for r in rows} == {"exact", "near"}
    assert sum(r["keep"] == "1" for r in rows) == len({r["group"] for r in rows})
    assert any(r["path"] == "copies/p00_big.png" and r["width"] == "144" for r in rows)
    text = invoke("-q", "duplicates", "--collection", "p", "--cache-dir", str(cache)).stdout
    assert text.startswith("group 1 (exact, 2 images") and "keep " in text


def test_pictures_are_drawn_a_page_at_a_time(planted, tmp_path):
    _, cache = planted
    out = tmp_path / "dups.png"
    result = invoke("duplicates", "--collection", "p", "--png", str(out), "--cache-dir", str(cache))
    assert result.exit_code == 0 and out.read_bytes().startswith(b"\x89PNG")
    assert "drawn in" in result.output


def _copy_collection(planted, tmp_path):
    """The planted folder and its collection, copied: moves change the folder."""
    import shutil

    folder, cache = planted
    shutil.copytree(folder, tmp_path / "photos")
    shutil.copytree(cache, tmp_path / "cache")
    manifest = tmp_path / "cache" / "collections" / "p" / "features"
    return tmp_path / "photos", tmp_path / "cache", manifest


def test_move_dry_run_and_undo_lose_nothing(planted, tmp_path):
    folder, cache = planted
    import shutil

    work = tmp_path / "photos"
    shutil.copytree(folder, work)
    home = tmp_path / "cache"
    assert invoke("-q", "extract", "--images", str(work), "--collection", "w", *FAST,
                  "--cache-dir", str(home)).exit_code == 0
    before = _tree(work)
    target = tmp_path / "moved"
    common = ["duplicates", "--collection", "w", "--cache-dir", str(home)]
    dry = invoke("-q", *common, "--move-to", str(target), "--dry-run")
    assert dry.exit_code == 0 and " -> " in dry.stdout and not target.exists()
    planned = [line.split(" -> ")[0] for line in dry.stdout.splitlines()]
    assert _tree(work) == before
    moved = invoke(*common, "--move-to", str(target))
    assert moved.exit_code == 0, moved.output
    record = next(target.glob("stl10sim-undo-*.json"))
    assert f"--undo {record}" in moved.output
    after = _tree(work)
    gone = set(before) - set(after)
    assert {str(work / g) for g in gone} == set(planned) and len(gone) == 4  # p00: 3 of 4 files, p01: 1 of 2
    assert {k: v for k, v in _tree(target).items() if not k.startswith("stl10sim-undo")} == \
        {k: before[k] for k in gone}  # every moved file, byte-identical, at its relative path
    assert {"originals/p00.png", "copies/p00_big.png"} & set(after) == {"copies/p00_big.png"}
    update = invoke("extract", "--images", str(work), "--collection", "w", *FAST, "--cache-dir", str(home))
    assert update.exit_code == 0 and "4 removed" in update.output
    undone = invoke("duplicates", "--undo", str(record))
    assert undone.exit_code == 0 and "put back 4 file(s)" in undone.output
    assert _tree(work) == before
    assert [p.name for p in target.rglob("*") if p.is_file()] == [record.name]
    again = invoke("duplicates", "--undo", str(record))
    assert again.exit_code == 0 and "put back 0 file(s); 4 already in place" in again.output


def test_moves_refuse_bad_targets_before_moving_anything(planted, tmp_path):
    folder, cache = planted
    common = ["duplicates", "--collection", "p", "--cache-dir", str(cache)]
    inside = invoke(*common, "--move-to", str(folder / "dups"))
    assert inside.exit_code == 2 and "inside the collection's folder" in inside.output
    taken = tmp_path / "taken"
    (taken / "copies").mkdir(parents=True)
    (taken / "copies" / "p00_q60.jpg").write_bytes(b"mine")
    refused = invoke(*common, "--move-to", str(taken))
    assert refused.exit_code == 2 and "nothing was moved" in refused.output
    assert (taken / "copies" / "p00_q60.jpg").read_bytes() == b"mine" and (folder / "copies" / "p00_q60.jpg").exists()
    assert invoke(*common, "--dry-run").exit_code == 2
    assert invoke(*common, "--json", "--csv").exit_code == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert invoke("duplicates", "--undo", str(bad)).exit_code == 2
    assert invoke("duplicates", "--undo", str(tmp_path / "none.json")).exit_code == 2
    for option in (["--keep", "biggest"], ["--kind", "twins"], ["--near-threshold", "0"],
                   ["--similar-threshold", "1.5"]):
        assert invoke(*common, *option).exit_code == 2, option


def _many_groups(folder: Path, count: int):
    """``count`` duplicate pairs as groups, each keeping its first file: what a move is handed."""
    from stl10_similarity.duplicates import DuplicateGroup

    groups = []
    for i in range(count):
        for name in (f"a/{i:04d}.bin", f"b/{i:04d}.bin"):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(os.urandom(2048))
        groups.append(DuplicateGroup("near", [2 * i, 2 * i + 1], 2 * i, [1.0, 0.99], 0.99,
                                     [f"a/{i:04d}.bin", f"b/{i:04d}.bin"]))
    return groups


def test_an_interrupted_move_is_undone(tmp_path, monkeypatch):
    folder, target = tmp_path / "photos", tmp_path / "moved"
    groups = _many_groups(folder, 20)
    before = _tree(folder)
    moves = planned_moves(groups, folder, target)
    real_unlink, calls = os.unlink, []

    def failing_unlink(path, *args, **kwargs):  # the 8th move links its file but dies before unlinking it
        calls.append(path)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", failing_unlink)
    with pytest.raises(KeyboardInterrupt):
        move_files(moves, target)
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert len(_tree(folder)) == 40 - 7
    report = undo_moves(next(target.glob("stl10sim-undo-*.json")))
    assert (report.restored, report.in_place, report.problems) == (7, 13, [])
    assert _tree(folder) == before


@pytest.mark.slow
def test_a_killed_move_is_undone(tmp_path):
    """SIGKILL wherever it lands: the undo record is on disk before the first move, and undo restores all."""
    folder, target = tmp_path / "photos", tmp_path / "moved"
    groups = _many_groups(folder, 400)
    before = _tree(folder)
    script = (
        "import pickle, sys, time\n"
        "from stl10_similarity.duplicates import moves\n"
        "real = moves._relink\n"
        "def slow(a, b):\n    time.sleep(0.01)\n    real(a, b)\n"
        "moves._relink = slow\n"
        "groups = pickle.loads(sys.stdin.buffer.read())\n"
        f"m = moves.planned_moves(groups, {str(folder)!r}, {str(target)!r})\n"
        f"moves.move_files(m, {str(target)!r})\n")
    import pickle

    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    child.stdin.write(pickle.dumps(groups))
    child.stdin.close()
    deadline = time.monotonic() + 60
    while not list(target.glob("stl10sim-undo-*.json")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert len(_tree(folder)) < 800  # it was killed mid-way
    report = undo_moves(next(target.glob("stl10sim-undo-*.json")))
    assert report.problems == [] and report.restored + report.in_place == 400
    assert _tree(folder) == before


def test_imported_features_have_near_duplicates_by_cosine_and_nothing_to_move(tmp_path):
    index, copies = _index(n=400, copies=5)
    np.save(tmp_path / "f.npy", np.asarray(index.features))
    cache = str(tmp_path / "c")
    assert invoke("-q", "import", "--features", str(tmp_path / "f.npy"), "--collection", "imp",
                  "--cache-dir", cache).exit_code == 0
    result = invoke("duplicates", "--collection", "imp", "--json", "--cache-dir", cache)
    assert result.exit_code == 0 and "no images to compare" in result.stderr
    groups = [json.loads(line) for line in result.stdout.splitlines()]
    assert {tuple(g["ids"]) for g in groups} >= {(i, 400 - copies + i) for i in range(copies)}
    assert all(g["kind"] == "near" and g["paths"] is None and g["bytes"] is None for g in groups)
    moved = invoke("duplicates", "--collection", "imp", "--move-to", str(tmp_path / "out"), "--cache-dir", cache)
    assert moved.exit_code == 2 and "needs a folder collection" in moved.output


def test_stl10_has_no_files_to_compare_byte_for_byte(built_cache):
    result = invoke("duplicates", "--json", "--cache-dir", str(built_cache))
    assert result.exit_code == 0 and "no file digests" in result.stderr
    assert all(json.loads(line)["kind"] == "near" for line in result.stdout.splitlines())
