"""Getting STL-10: resumed, retried and verified downloads against a local server, and the two-command first run."""

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

import pytest
from archive_server import ArchiveServer
from click.testing import CliRunner
from conftest import invoke

from stl10_similarity.cli import main
from stl10_similarity.sources import stl10


def _contents(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if p.name != ".lock") if data.exists() else []


def test_a_killed_download_resumes_with_the_remainder_only(tmp_path, archive, monkeypatch):
    body = archive.read_bytes()
    half = len(body) // 2
    data = tmp_path / "data"
    part = data / "stl10_binary.tar.gz.part"
    with ArchiveServer([body], stall_after=half) as server:
        env = {**os.environ, "STL10SIM_URL": server.url}
        proc = subprocess.Popen([sys.executable, "-m", "stl10_similarity", "-q", "download", "--no-verify",
                                 "--data-dir", str(data)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert server.stalled.wait(60), "the download never started"
            deadline = time.monotonic() + 30
            while not (part.is_file() and part.stat().st_size == half) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert part.stat().st_size == half  # what arrived before the kill was kept
        assert not (data / "stl10_binary").exists()
        monkeypatch.setenv("STL10SIM_URL", server.url)
        result = invoke("-q", "download", "--no-verify", "--data-dir", str(data))
    assert result.exit_code == 0 and "network" in result.stdout
    assert [(r.range, r.status, r.sent) for r in server.requests] == [
        (None, 200, half), (f"bytes={half}-", 206, len(body) - half)]
    assert stl10.open_source(data, "train+test").size == 100
    assert _contents(data) == ["stl10_binary"]  # the part file is gone once the files are installed


def test_a_server_that_ignores_range_gets_a_full_download(tmp_path, archive, monkeypatch):
    body = archive.read_bytes()
    data = tmp_path / "data"
    data.mkdir()
    (data / "stl10_binary.tar.gz.part").write_bytes(b"stale bytes from somewhere else")
    with ArchiveServer([body], ranges=False) as server:
        monkeypatch.setenv("STL10SIM_URL", server.url)
        result = invoke("-q", "download", "--no-verify", "--data-dir", str(data))
    assert result.exit_code == 0
    assert [(r.range is not None, r.status, r.sent) for r in server.requests] == [(True, 200, len(body))]
    assert stl10.open_source(data, "all").size == 120


def test_transient_errors_are_retried(tmp_path, archive, monkeypatch):
    data = tmp_path / "data"
    with ArchiveServer([archive.read_bytes()], fail_first=2) as server:
        monkeypatch.setenv("STL10SIM_URL", server.url)
        result = invoke("download", "--no-verify", "--data-dir", str(data))
    assert result.exit_code == 0
    assert [r.status for r in server.requests] == [503, 503, 200]
    assert result.stderr.count("STL-10: HTTP 503; retrying in 0 s") == 2


def test_a_corrupted_archive_is_fetched_again_once_then_refused(tmp_path, archive, monkeypatch):
    body = archive.read_bytes()
    monkeypatch.setattr(stl10, "ARCHIVE_MD5", hashlib.md5(body).hexdigest())  # our small archive plays the official one
    corrupt = body[:1000] + bytes([body[1000] ^ 0xFF]) + body[1001:]
    data = tmp_path / "data"
    with ArchiveServer([corrupt, corrupt]) as server:
        monkeypatch.setenv("STL10SIM_URL", server.url)
        refused = CliRunner().invoke(main, ["download", "--data-dir", str(data)])
    assert refused.exit_code == 2 and len(server.requests) == 2
    assert "fetching it once more" in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("Error: STL-10 from http://127.0.0.1:")
    assert "failed its checksum twice" in refused.stderr and "--no-verify" in refused.stderr
    assert _contents(data) == []

    with ArchiveServer([corrupt, body]) as server:
        monkeypatch.setenv("STL10SIM_URL", server.url)
        result = invoke("download", "--data-dir", str(data))
    assert result.exit_code == 0 and len(server.requests) == 2
    assert "(network; verified)" in result.stdout
    assert stl10.verification_record(data)["verified_md5"] is True


def test_download_progress_shows_bytes_and_rate(tmp_path, archive, monkeypatch):
    with ArchiveServer([archive.read_bytes()]) as server:
        monkeypatch.setenv("STL10SIM_URL", server.url)
        loud = invoke("download", "--no-verify", "--data-dir", str(tmp_path / "a"))
        quiet = invoke("-q", "download", "--no-verify", "--data-dir", str(tmp_path / "b"))
    assert "STL-10: 100%" in loud.stderr and "B/s" in loud.stderr
    assert quiet.stderr == ""


def test_the_same_archive_twice_is_unpacked_once(tmp_path, archive, monkeypatch):
    data = tmp_path / "data"
    assert "archive" in invoke("-q", "download", "--archive", str(archive), "--no-verify", "--data-dir", str(data)).stdout
    monkeypatch.setattr(stl10, "_unpack", lambda *a: pytest.fail("unpacked again"))
    again = invoke("-q", "download", "--archive", str(archive), "--no-verify", "--data-dir", str(data))
    assert again.exit_code == 0 and "cached" in again.stdout


def _console_script() -> str:
    script = shutil.which("stl10sim", path=str(Path(sys.executable).parent))
    assert script, "the stl10sim console script is not installed beside this Python (pip install -e .)"
    return script


@pytest.mark.slow
def test_first_run_is_two_commands(tmp_path, archive):
    """A new user's run: an empty cache with the archive in the data dir, `extract`, then `query --json`."""
    cache = tmp_path / "cache"
    (cache / "data").mkdir(parents=True)
    shutil.copy(archive, cache / "data" / "stl10_binary.tar.gz")
    env = {**os.environ, "STL10SIM_CACHE_DIR": str(cache)}
    stl10sim = _console_script()
    extract = subprocess.run([stl10sim, "extract", "--weights", "none", "--no-verify"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert extract.returncode == 0, extract.stderr
    assert extract.stdout.startswith("features for 100 images in ")
    query = subprocess.run([stl10sim, "query", "--image-id", "42", "--json"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert query.returncode == 0, query.stderr
    assert query.stderr.startswith("no index yet: building it")
    doc = json.loads(query.stdout)
    assert list(doc) == ["query", "results", "params", "timing_ms", "candidates"]
    assert doc["query"] == {"id": 42, "label": "car", "class_index": 2} and len(doc["results"]) == 5
    assert doc["params"]["n"] == 100 and doc["params"]["method"] == "auto"
