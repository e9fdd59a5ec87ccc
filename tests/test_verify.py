"""Opening trusts a file stamp once the file was hashed; `stl10sim verify` always hashes everything."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from stl10_similarity.cli import main
from stl10_similarity.session import Session
from stl10_similarity.store import artifacts


def _artifacts(cache) -> list:
    found = []
    for stage in ("features", "index"):
        manifest = json.loads((cache / stage / "manifest.json").read_text())
        found += [cache / stage / entry["file"] for entry in manifest["artifacts"].values()]
    return found


def _flip_one_byte(path) -> bytes:
    """Flip a byte past the header, leaving size and mtime as they were; the original bytes are returned."""
    data = path.read_bytes()
    st = path.stat()
    at = len(data) - 1 - len(data) // 3
    with open(path, "r+b") as handle:
        handle.seek(at)
        handle.write(bytes([data[at] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return data


def test_verify_catches_a_flipped_byte_in_every_artifact(cache):
    clean = CliRunner().invoke(main, ["verify", "--cache-dir", str(cache)])
    assert clean.exit_code == 0, clean.output
    paths = _artifacts(cache)
    assert len(clean.stdout.splitlines()) == len(paths) and all(line.startswith("ok ") for line in clean.stdout.splitlines())
    for path in paths:
        original = _flip_one_byte(path)
        result = CliRunner().invoke(main, ["verify", "--cache-dir", str(cache)])
        assert result.exit_code == 2, path
        assert f"BAD  {path}" in result.stdout and f"{path} does not match its manifest" in result.stderr
        path.write_bytes(original)
    assert CliRunner().invoke(main, ["verify", "--cache-dir", str(cache)]).exit_code == 0


@pytest.fixture
def hashed(monkeypatch):
    """Which files get hashed; stamps are trusted at once (no wait for the coarse file clock)."""
    monkeypatch.setattr(artifacts, "RACY_NS", -10**12)
    calls: list[str] = []
    original = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda path, *a: (calls.append(os.path.basename(path)), original(path, *a))[1])
    return calls


def test_an_artifact_is_hashed_once_then_trusted_until_it_changes(cache, hashed):
    Session.open(cache, build=False)
    first = [name for name in hashed if name != "manifest.json"]
    assert "features.npy" in first and "signatures.npy" in first and "forest.pkl" not in first  # only when needed
    hashed.clear()
    Session.open(cache, build=False)
    assert [name for name in hashed if name != "manifest.json"] == []  # the stamps hold: nothing hashed again
    os.utime(cache / "index" / "sets.npy")  # touched, same content: hashed once, then stamped again
    Session.open(cache, build=False)
    assert [name for name in hashed if name != "manifest.json"] == ["sets.npy"]
    hashed.clear()
    Session.open(cache, build=False)
    assert [name for name in hashed if name != "manifest.json"] == []


def test_an_edit_that_keeps_size_and_mtime_is_still_refused(cache, hashed):
    Session.open(cache, build=False)  # every artifact stamped
    _flip_one_byte(cache / "features" / "features.npy")  # the inode's ctime moves: it can't be set back
    result = CliRunner().invoke(main, ["query", "--image-id", "1", "--cache-dir", str(cache)])
    assert result.exit_code == 2 and "features.npy does not match its manifest" in result.stderr


def test_a_garbled_stamps_file_costs_a_hashing_not_an_answer(cache, hashed):
    Session.open(cache, build=False)
    (cache / "features" / artifacts.STAMPS).write_text("{not json")
    hashed.clear()
    Session.open(cache, build=False)
    assert "features.npy" in hashed
    stamps = json.loads((cache / "features" / artifacts.STAMPS).read_text())
    stamps["features.npy"]["sha256"] = "0" * 64  # a stamp that lies about the hash never matches the manifest's
    (cache / "features" / artifacts.STAMPS).write_text(json.dumps(stamps))
    hashed.clear()
    Session.open(cache, build=False)
    assert "features.npy" in hashed
