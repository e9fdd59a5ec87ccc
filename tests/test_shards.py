"""Sharded collections (`index --shards S`): every shard an ordinary index over its rows with one vocabulary;
queries fan out to every shard and merge into exactly the answers of one unsharded index."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from stl10_similarity.cli import main
from stl10_similarity.index import load_index
from stl10_similarity.session import Session
from stl10_similarity.synthetic import synthetic_features

METHODS = ("auto", "rerank", "forest", "exact")


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def imported(tmp_path):
    """3,000 clustered synthetic features (labelled, with paths) imported as a collection: large enough that a
    candidate budget of 60 makes the forest choose depths and trim (not merely return everything)."""
    feats, clusters = synthetic_features(3000, seed=11)
    np.save(tmp_path / "f.npy", feats)
    np.save(tmp_path / "labels.npy", (clusters % 5).astype(np.int64))
    (tmp_path / "paths.txt").write_text("".join(f"part{i % 7}/img{i:05d}.jpg\n" for i in range(3000)))
    cache = tmp_path / "cache"
    out = _run("import", "--features", str(tmp_path / "f.npy"), "--collection", "ext", "--labels",
               str(tmp_path / "labels.npy"), "--paths", str(tmp_path / "paths.txt"), "--cache-dir", str(cache))
    assert out.exit_code == 0, out.output
    return cache, cache / "collections" / "ext"


def _answers(cache, queries=range(0, 3000, 97)) -> list[dict]:
    out = []
    for method in METHODS:
        result = _run("query", *sum((["--image-id", str(q)] for q in queries), []), "-k", "10", "--method", method,
                      "--candidates", "60", "--json", "--collection", "ext", "--cache-dir", str(cache))
        assert result.exit_code == 0, result.output
        for line in result.stdout.splitlines():
            doc = json.loads(line)
            doc.pop("timing_ms")
            out.append(doc)
    return out


def test_a_sharded_index_answers_as_one_index(imported):
    cache, home = imported
    assert _run("index", "--collection", "ext", "--cache-dir", str(cache)).exit_code == 0
    one = _answers(cache)
    out = _run("index", "--shards", "4", "--collection", "ext", "--cache-dir", str(cache))
    assert out.exit_code == 0 and "as 4 shards" in out.stdout, out.output
    index = load_index(home)
    assert [s.n for s in index.shards] == [750, 750, 750, 750]
    assert all(np.array_equal(s.vocabulary, index.shards[0].vocabulary) for s in index.shards)
    assert not (home / "index" / "tree_keys.npy").exists()  # the unsharded layout's files went
    four = _answers(cache)
    assert four == one  # every method, every score, every path: the same JSON
    # and back to one index: the shard folders go
    assert _run("index", "--collection", "ext", "--cache-dir", str(cache)).exit_code == 0
    assert not list((home / "index").glob("shard_*")) and _answers(cache) == one


def test_a_sharded_collection_is_rebuilt_as_shards_and_verified(imported, tmp_path):
    cache, home = imported
    assert _run("index", "--shards", "3", "--collection", "ext", "--cache-dir", str(cache)).exit_code == 0
    # new features (imported again): opening the collection rebuilds the index, still as 3 shards
    feats, _ = synthetic_features(900, seed=12)
    np.save(tmp_path / "g.npy", feats)
    assert _run("import", "--features", str(tmp_path / "g.npy"), "--collection", "ext", "--force",
                "--cache-dir", str(cache)).exit_code == 0
    session = Session.open(home)
    assert len(session.index.shards) == 3 and session.n == 900
    assert _run("verify", "--collection", "ext", "--cache-dir", str(cache)).exit_code == 0
    victim = home / "index" / "shard_001" / "signatures.npy"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    out = _run("verify", "--collection", "ext", "--cache-dir", str(cache))
    assert out.exit_code == 2 and "shard_001/signatures.npy" in out.output
    out = _run("query", "--image-id", "1", "--collection", "ext", "--cache-dir", str(cache))
    assert out.exit_code == 2  # refused, not answered from a tampered shard


def test_more_shards_than_images_exit_2(imported):
    cache, _ = imported
    out = _run("index", "--shards", "4000", "--collection", "ext", "--cache-dir", str(cache))
    assert out.exit_code == 2 and "--shards (4000) is more than the collection's 3000 images" in out.output
    out = _run("index", "--engine", "ray", "--collection", "ext", "--cache-dir", str(cache))
    assert out.exit_code == 2 and "--shards" in out.output
