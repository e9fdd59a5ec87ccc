"""The whole CLI path as users run it, and the answers to bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FAST, invoke

from stl10_similarity.cli import main

RESULT_KEYS = ["rank", "id", "label", "class_index", "jaccard", "jaccard_estimate", "cosine", "intersection",
               "union", "unique_to_query", "unique_to_match", "set_jaccard"]


@pytest.mark.slow
def test_end_to_end_from_archive(tmp_path, archive):
    cache = str(tmp_path / "c")
    assert invoke("-q", "download", "--archive", str(archive), "--no-verify", "--cache-dir", cache).exit_code == 0
    extract = invoke("-q", "extract", *FAST, "--cache-dir", cache)
    assert extract.exit_code == 0 and "features for 100 images" in extract.output
    from stl10_similarity.ingest.model import cpu_has_bf16, pick_device

    device = pick_device("auto")  # a GPU where there is one: the suite runs on both
    precision = "bf16" if device == "cpu" and cpu_has_bf16() else "fp32"
    assert f"{device}, {precision}, batch 16)" in extract.output  # what auto picked
    assert invoke("-q", "index", "--cache-dir", cache).exit_code == 0
    png = tmp_path / "grid.png"
    result = invoke("query", "--image-id", "3", "--json", "--png", str(png), "--cache-dir", cache)
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["query"] == {"id": 3, "label": "cat", "class_index": 3}
    assert len(doc["results"]) == 5
    assert png.is_file()


def test_query_json_schema(built_cache):
    result = invoke("query", "--image-id", "42", "-k", "7", "--json", "--cache-dir", str(built_cache))
    doc = json.loads(result.stdout)
    assert list(doc) == ["query", "results", "params", "timing_ms", "candidates"]
    assert list(doc["query"]) == ["id", "label", "class_index"]
    assert [r["rank"] for r in doc["results"]] == list(range(1, 8))
    for r in doc["results"]:
        assert list(r) == RESULT_KEYS
        assert r["id"] != 42
        size = doc["params"]["top_k"]
        assert r["union"] == 2 * size - r["intersection"] and r["unique_to_query"] == size - r["intersection"]
        assert r["jaccard"] == pytest.approx(r["intersection"] / r["union"], abs=1e-6)
        assert 0.0 <= r["jaccard_estimate"] <= 1.0 and -1.0 <= r["cosine"] <= 1.0001
        assert 0.0 <= r["set_jaccard"] <= 1.0
    for key in ("method", "k", "top_k", "num_perm", "trees", "scheme", "seed", "weights", "split", "n", "sets",
                "centroids", "set_size", "vocabulary"):
        assert key in doc["params"]
    assert doc["params"]["scheme"] == "affine32" and doc["params"]["n"] == 100
    # the index's sets are described: 12 nearest of the centroids learned on these 100 images
    assert doc["params"]["vocabulary"] == {"kind": "centroids", "universe": 64, "fitted_on": 100}


def test_several_ids_give_ndjson(built_cache):
    result = invoke("query", "--image-id", "1", "--image-id", "2", "--json", "--cache-dir", str(built_cache))
    lines = result.stdout.strip().splitlines()
    assert [json.loads(line)["query"]["id"] for line in lines] == [1, 2]


def test_text_output_names_every_score(built_cache):
    out = invoke("query", "--image-id", "5", "-k", "2", "--cache-dir", str(built_cache)).stdout
    assert out.startswith("Query: image 5 (label: dog)")
    for word in ("estimated Jaccard (MinHash)", "exact Jaccard", "cosine", "intersection", "union",
                 "unique to query", "unique to match"):
        assert word in out
    assert out.count("(label: ") == 3


def test_png_decodes_to_expected_size(built_cache, tmp_path):
    from PIL import Image

    from stl10_similarity.grid import grid_size

    png = tmp_path / "g.png"
    assert invoke("-q", "query", "--image-id", "0", "-k", "8", "--png", str(png), "--cache-dir", str(built_cache)).exit_code == 0
    with Image.open(png) as img:
        img.load()
        assert img.size == grid_size(8) == (1440, 600)


def test_k_larger_than_collection_returns_everything_else(built_cache):
    doc = json.loads(invoke("query", "--image-id", "0", "-k", "500", "--json", "--cache-dir", str(built_cache)).stdout)
    ids = [r["id"] for r in doc["results"]]
    assert len(ids) == 99 and len(set(ids)) == 99 and 0 not in ids


def test_cached_rerun_does_no_work(cache):
    manifests = [cache / "features" / "manifest.json", cache / "index" / "manifest.json"]
    before = [p.stat().st_mtime_ns for p in manifests]
    extract = invoke("extract", *FAST, "--cache-dir", str(cache))
    index = invoke("index", "--cache-dir", str(cache))
    assert "cached" in extract.stdout and "cached" in index.stdout
    assert [p.stat().st_mtime_ns for p in manifests] == before


def test_index_from_an_older_layout_is_rebuilt(cache):
    from stl10_similarity.errors import StaleArtifactError
    from stl10_similarity.session import Session

    manifest = cache / "index" / "manifest.json"
    doc = json.loads(manifest.read_text())
    del doc["artifacts"]["vocabulary"]  # an index from before the learned centroids
    del doc["vocabulary"]
    manifest.write_text(json.dumps(doc))
    with pytest.raises(StaleArtifactError, match="older version"):  # not rebuilt when asked not to: one clear error
        Session.open(cache, build=False)
    assert "built in" in invoke("index", "--cache-dir", str(cache)).stdout
    assert invoke("query", "--image-id", "1", "--cache-dir", str(cache)).exit_code == 0


def test_an_index_whose_sets_were_assigned_in_float32_is_rebuilt(cache):
    """Indexes from before the int8 code products record no ``assignment``: their sets are not what a query's
    features would get today, so the next query rebuilds the index and says so."""
    manifest = cache / "index" / "manifest.json"
    doc = json.loads(manifest.read_text())
    assert doc["params"].pop("assignment") == "int8 codes, 127 x 63 levels"
    manifest.write_text(json.dumps(doc))
    result = CliRunner().invoke(main, ["query", "--image-id", "1", "--json", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("the index is out of date: bringing it up to date")
    assert json.loads(result.stdout)["params"]["assignment"] == "int8 codes, 127 x 63 levels"


def test_query_rebuilds_a_stale_index_with_its_last_parameters(cache):
    assert invoke("-q", "index", "--top-k", "50", "--force", "--cache-dir", str(cache)).exit_code == 0
    assert invoke("-q", "extract", *FAST, "--limit", "50", "--cache-dir", str(cache)).exit_code == 0
    result = CliRunner().invoke(main, ["query", "--image-id", "1", "--json", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        "the index is out of date: bringing it up to date (sets: 12 nearest of auto centroids, num_perm 128, "
        "trees 32) ..."]
    doc = json.loads(result.stdout)
    assert doc["params"]["top_k"] == 50 and doc["params"]["n"] == 50
    again = CliRunner().invoke(main, ["query", "--image-id", "1", "--json", "--cache-dir", str(cache)])
    assert again.stderr == "" and json.loads(again.stdout)["results"] == doc["results"]


def test_query_does_not_import_torch(built_cache):
    code = (
        "import sys; from stl10_similarity.cli import main\n"
        f"try: main(['query', '--image-id', '3', '--json', '--cache-dir', {str(built_cache)!r}])\n"
        "except SystemExit as e: assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'datasketch' not in sys.modules and 'matplotlib' not in sys.modules, 'slow imports'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["query"]["id"] == 3


def test_module_entry_point(built_cache):
    proc = subprocess.run([sys.executable, "-m", "stl10_similarity", "query", "--image-id", "2", "--json",
                           "--cache-dir", str(built_cache)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["query"]["id"] == 2


def test_cli_defaults_and_choices_are_the_parameter_classes():
    """One place for each default: the CLI's options show what params.py says."""
    from dataclasses import fields

    from stl10_similarity import params as P

    for command, cls in (("extract", P.ExtractParams), ("index", P.IndexParams), ("query", P.SearchParams)):
        options = {o.name: o for o in main.commands[command].params}
        for f in fields(cls):
            if f.name in options:
                assert options[f.name].default == f.default, (command, f.name)
                if f.metadata.get("choices"):
                    assert tuple(options[f.name].type.choices) == f.metadata["choices"], (command, f.name)


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing written


def _snapshot(folder: Path) -> dict[str, int]:
    """Every file's mtime, but for the lock and the stamps files (a cache of hashes, rewritten as files are hashed)."""
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and p.name not in (".lock", ".stamps.json")}


def _bad_weights(tmp: Path, cache: Path) -> list[str]:
    not_pth = tmp / "weights.pth"
    not_pth.write_text("not a checkpoint")
    return ["extract", "--weights", str(not_pth)]


def _wrong_keys(tmp: Path, cache: Path) -> list[str]:
    import torch

    path = tmp / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    return ["extract", "--weights", str(path)]


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _data_file(name: str, mutate) -> object:
    """Corrupt one STL-10 file in the cache's data dir, then ask for a fresh extraction."""
    def make(tmp: Path, cache: Path) -> list[str]:
        path = cache / "data" / "stl10_binary" / name
        mutate(path)
        return ["extract", *FAST, "--force"]
    return make


def _artifact(rel: str, mutate) -> object:
    def make(tmp: Path, cache: Path) -> list[str]:
        mutate(cache / rel)
        method = ["--method", "forest-query"] if rel.endswith(".pkl") else []  # the pickle's only reader
        return ["query", "--image-id", "1", *method]
    return make


BAD = {
    # query
    "negative id": lambda t, c: ["query", "--image-id", "-1"],
    "id past the end": lambda t, c: ["query", "--image-id", "100"],
    "id not a number": lambda t, c: ["query", "--image-id", "three"],
    "k below 1": lambda t, c: ["query", "--image-id", "1", "-k", "0"],
    "k not a number": lambda t, c: ["query", "--image-id", "1", "-k", "x"],
    "candidates 0": lambda t, c: ["query", "--image-id", "1", "--candidates", "0"],
    "unknown method": lambda t, c: ["query", "--image-id", "1", "--method", "fastest"],
    "no query given": lambda t, c: ["query"],
    "image not an image": lambda t, c: ["query", "--image", str(_write(t / "x.png", "text"))],
    "image empty file": lambda t, c: ["query", "--image", str(_write(t / "e.jpg", b""))],
    "image missing": lambda t, c: ["query", "--image", str(t / "missing.jpg")],
    "image is a folder": lambda t, c: ["query", "--image", str(t)],
    "huge image": lambda t, c: ["query", "--image", str(_huge_png(t))],
    # index
    "top-k 0": lambda t, c: ["index", "--top-k", "0", "--force"],
    "top-k 1281": lambda t, c: ["index", "--top-k", "1281", "--force"],
    "num-perm not multiple of trees": lambda t, c: ["index", "--num-perm", "100", "--trees", "8", "--force"],
    "num-perm below trees": lambda t, c: ["index", "--num-perm", "4", "--trees", "8", "--force"],
    "unknown basis": lambda t, c: ["index", "--basis", "whitened"],
    # extract
    "unknown split": lambda t, c: ["extract", "--split", "validation"],
    "unreadable weights": _bad_weights,
    "weights with wrong keys": _wrong_keys,
    "missing weights file": lambda t, c: ["extract", "--weights", str(t / "nope.pth")],
    "batch size 0": lambda t, c: ["extract", "--batch-size", "0"],
    "limit 0": lambda t, c: ["extract", "--limit", "0"],
    "image size 8": lambda t, c: ["extract", "--image-size", "8"],
    "unknown device": lambda t, c: ["extract", "--device", "tpu"],
    "fp16 on the cpu": lambda t, c: ["extract", *FAST, "--device", "cpu", "--precision", "fp16", "--force"],
    "truncated image file": _data_file("train_X.bin", lambda p: p.write_bytes(p.read_bytes()[:-1])),
    "empty image file": _data_file("test_X.bin", lambda p: p.write_bytes(b"")),
    "labels of wrong length": _data_file("train_y.bin", lambda p: p.write_bytes(p.read_bytes()[:-3])),
    "label value 0": _data_file("test_y.bin", lambda p: p.write_bytes(b"\x00" * p.stat().st_size)),
    "label value 11": _data_file("test_y.bin", lambda p: p.write_bytes(b"\x0b" * p.stat().st_size)),
    "class names missing": _data_file("class_names.txt", lambda p: p.unlink()),
    "class names wrong count": _data_file("class_names.txt", lambda p: p.write_text("cat\ndog\n")),
    # artifacts
    "features of wrong shape": _artifact("features/features.npy", lambda p: np.save(p, np.zeros((100, 10), np.float32))),
    "features of wrong dtype": _artifact("features/features.npy", lambda p: np.save(p, np.load(p).astype(np.float64))),
    "features manifest not JSON": _artifact("features/manifest.json", lambda p: p.write_text("{not json")),
    "index manifest not JSON": _artifact("index/manifest.json", lambda p: p.write_text("")),
    "index manifest of another stage": _artifact("index/manifest.json",
                                                 lambda p: p.write_text((p.parents[1] / "features/manifest.json").read_text())),
    "forest pickle is garbage": _artifact("index/forest.pkl", lambda p: p.write_bytes(b"garbage")),
    # download, evaluate, bench
    "archive missing": lambda t, c: ["download", "--archive", str(t / "none.tar.gz")],
    "archive not a tarball": lambda t, c: ["download", "--no-verify", "--archive", str(_write(t / "a.tar.gz", "x" * 600))],
    "evaluate k 0": lambda t, c: ["evaluate", "-k", "0"],
    "evaluate queries 0": lambda t, c: ["evaluate", "--queries", "0"],
    "bench n too small": lambda t, c: ["bench", "--n", "5"],
    "bench num-perm not multiple of trees": lambda t, c: ["bench", "--n", "200", "--num-perm", "100", "--trees", "8"],
}


def _huge_png(tmp: Path) -> Path:
    """A small file that claims 200,000 x 200,000 pixels: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 2, 0, 0, 0)
    path = tmp / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_with_one_line(case, cache, tmp_path):
    args = BAD[case](tmp_path, cache)
    before = _snapshot(cache)
    result = CliRunner().invoke(main, [*args, "--cache-dir", str(cache)])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith(("Error", "Usage", "Try "))]  # progress lines aside
    assert said == lines[-1:] and said[0].startswith("Error"), result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert _snapshot(cache) == before


@pytest.mark.parametrize("command", [["query", "--image-id", "1"], ["index"]])
def test_stage_before_its_input_names_the_command(tmp_path, command):
    result = CliRunner().invoke(main, [*command, "--cache-dir", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "run `stl10sim extract` first" in result.stderr


def test_extract_offline_without_data_says_where_to_put_the_archive(tmp_path):
    result = CliRunner().invoke(main, ["-q", "extract", "--weights", "none", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot download STL-10 from http://127.0.0.1:9/")
    assert f"put stl10_binary.tar.gz in {tmp_path / 'c' / 'data'} and rerun, or pass --archive PATH" in lines[0]
    assert not (tmp_path / "c" / "features").exists()


def test_query_and_evaluate_build_a_missing_index_first(tmp_path, archive):
    cache = str(tmp_path / "c")
    invoke("-q", "download", "--archive", str(archive), "--no-verify", "--cache-dir", cache)
    invoke("-q", "extract", *FAST, "--cache-dir", cache)
    result = CliRunner().invoke(main, ["query", "--image-id", "1", "--json", "--cache-dir", cache])
    assert result.exit_code == 0
    assert result.stderr.startswith("no index yet: building it (sets: 12 nearest of auto centroids, num_perm 128, "
                                    "trees 32)")
    assert json.loads(result.stdout)["query"]["id"] == 1
    shutil.rmtree(tmp_path / "c" / "index")
    result = CliRunner().invoke(main, ["-q", "evaluate", "--queries", "5", "--json", "--cache-dir", cache])
    assert result.exit_code == 0 and result.stderr == ""
    assert json.loads(result.stdout)["queries"] == 5


def test_library_errors_name_the_flags_the_user_typed(cache):
    result = CliRunner().invoke(main, ["index", "--num-perm", "100", "--trees", "8", "--cache-dir", str(cache)])
    assert result.stderr == "Error: --num-perm (100) must be a multiple of --trees (8)\n"
    result = CliRunner().invoke(main, ["query", "--image-id", "100", "--cache-dir", str(cache)])
    assert result.stderr == "Error: --image-id 100 is out of range: the collection has 100 images (ids 0..99)\n"
    result = CliRunner().invoke(main, ["download", "--archive", str(_write(cache / "a.tar.gz", "x" * 600)),
                                       "--data-dir", str(cache / "d")])
    assert result.exit_code == 2 and result.stderr.rstrip().endswith("accept it anyway with --no-verify")
