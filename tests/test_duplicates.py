"""`stl10sim duplicates`: planted near-copies are grouped, from forest candidates, never from all pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import invoke
from stl10_fixture import make_images

from stl10_similarity.cli import main
from stl10_similarity.duplicates import MAX_RUN, duplicate_trees, find_duplicates, prefix_runs
from stl10_similarity.index import index_in_memory
from stl10_similarity.params import DuplicatesParams, IndexParams

FAST = ["--weights", "none", "--image-size", "64", "--batch-size", "16"]


def _index(n: int = 600, copies: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.normal(size=(n, 1280))).astype(np.float32) ** 3
    x[n - copies :] = x[:copies] + rng.normal(0, 0.02, (copies, 1280)).astype(np.float32) * x[:copies]
    x = np.maximum(x, 0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return index_in_memory(x, np.full(n, -1, np.int16), [], IndexParams()), copies


def test_planted_copies_are_found_without_all_pairs():
    index, copies = _index(n=3000)
    forest = duplicate_trees(index)
    n, trees = index.n, forest[1].shape[0]

    def compared(max_run: int) -> int:  # pairs whose cosine is computed (a pair may be counted in several trees)
        return sum(len(m) * (len(m) - 1) // 2 for t in range(trees) for m in prefix_runs(forest[0][t], forest[1][t], max_run))

    assert compared(64) <= trees * n * (64 - 1) // 2  # linear in n: each image joins one small run per tree
    assert compared(64) < n * (n - 1) // 2 / 4
    assert compared(MAX_RUN) <= trees * n * (MAX_RUN - 1) // 2
    groups = find_duplicates(index, DuplicatesParams(threshold=0.95))
    found = {tuple(g.ids) for g in groups}
    assert {(i, n - copies + i) for i in range(copies)} <= found
    for g in groups:
        vectors = np.asarray(index.features[g.ids])
        assert g.min_cosine == pytest.approx(float((vectors @ vectors.T).min()), abs=1e-5)
        assert g.min_cosine >= 0.95


def test_a_high_threshold_finds_nothing_among_distinct_images():
    index, _ = _index(copies=1)
    assert find_duplicates(index, DuplicatesParams(threshold=0.9999)) == []


def test_duplicates_command_on_a_folder(tmp_path):
    from PIL import Image

    images = make_images(np.arange(10) % 5, seed=3)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(folder / f"p{i}.png")
    original = Image.open(folder / "p0.png").convert("RGB")
    original.resize((144, 144)).save(folder / "p0_big.jpg", quality=95)
    original.save(folder / "p0_low.jpg", quality=40)
    cache = str(tmp_path / "c")
    assert invoke("-q", "extract", "--images", str(folder), "--collection", "p", *FAST, "--cache-dir", cache).exit_code == 0
    result = invoke("duplicates", "--collection", "p", "--json", "--threshold", "0.97", "--cache-dir", cache)
    assert result.exit_code == 0
    groups = [json.loads(line) for line in result.stdout.splitlines()]
    with_p0 = [g for g in groups if "p0.png" in g["paths"]]
    assert with_p0 and {"p0_big.jpg", "p0_low.jpg"} <= set(with_p0[0]["paths"])
    assert list(with_p0[0]) == ["ids", "paths", "min_cosine"] and with_p0[0]["min_cosine"] >= 0.97
    text = invoke("-q", "duplicates", "--collection", "p", "--threshold", "0.97", "--cache-dir", cache).stdout
    assert text.startswith("group 1: ") and "p0.png" in text


@pytest.mark.parametrize("value", ["0", "1.5", "high"])
def test_bad_threshold_exits_2(value, built_cache):
    result = CliRunner().invoke(main, ["duplicates", "--threshold", value, "--cache-dir", str(built_cache)])
    assert result.exit_code == 2
