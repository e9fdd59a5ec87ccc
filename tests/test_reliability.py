"""Crashes, kills, corrupt artifacts, concurrent commands and full disks cost no work and give no wrong answers."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import invoke

from stl10_similarity.cli import main
from stl10_similarity.store import artifacts


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stl10_similarity", *args]


def _wait_for(predicate, timeout: float = 120.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def _manifest_consistent(folder: Path) -> None:
    """A manifest present means every file it names matches it; no temporary file holds a real name."""
    manifest = folder / "manifest.json"
    if manifest.exists():
        doc = json.loads(manifest.read_text())
        for name, entry in doc["artifacts"].items():
            path = folder / entry["file"]
            assert path.stat().st_size == entry["bytes"] and artifacts.sha256_file(path) == entry["sha256"], name


@pytest.mark.slow
def test_killed_extract_resumes_to_identical_features(tmp_path, archive):
    data = tmp_path / "data"
    invoke("-q", "download", "--archive", str(archive), "--no-verify", "--data-dir", str(data))
    args = ["extract", "--weights", "none", "--image-size", "128", "--batch-size", "8", "--chunk-size", "8",
            "--data-dir", str(data)]
    clean = tmp_path / "clean"
    assert invoke("-q", *args, "--cache-dir", str(clean)).exit_code == 0

    cache = tmp_path / "killed"
    partial = cache / "features" / "partial"
    proc = subprocess.Popen(_cli("-q", *args, "--cache-dir", str(cache)), stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: len(list(partial.glob("chunk_*.npy"))) >= 3)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = len(list(partial.glob("chunk_*.npy")))
    assert 3 <= done < 13 and not (cache / "features" / "manifest.json").exists()
    resumed = invoke("extract", *args[1:], "--cache-dir", str(cache))
    assert resumed.exit_code == 0 and f"resumed after {done} chunks" in resumed.stdout
    assert not partial.exists()
    a = np.load(clean / "features" / "features.npy")
    b = np.load(cache / "features" / "features.npy")
    assert a.dtype == b.dtype and np.array_equal(a, b)  # bit-identical


@pytest.mark.slow
def test_index_killed_at_any_moment_leaves_no_half_artifact(cache):
    index_dir = cache / "index"
    reference = {p.name: p.read_bytes() for p in index_dir.iterdir() if p.suffix in (".npy", ".pkl")}
    for delay in (0.4, 0.8, 1.2, 1.6, 2.0):
        proc = subprocess.Popen(_cli("-q", "index", "--force", "--cache-dir", str(cache)), stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _manifest_consistent(index_dir)
    assert invoke("-q", "index", "--cache-dir", str(cache)).exit_code == 0
    _manifest_consistent(index_dir)
    assert {p.name: p.read_bytes() for p in index_dir.iterdir() if p.suffix in (".npy", ".pkl")} == reference
    assert not [p for p in index_dir.iterdir() if p.name.endswith(".tmp")]


def test_malicious_pickle_is_refused_without_running(cache, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (cache / "index" / "forest.pkl").write_bytes(pickle.dumps(Exploit()))
    # only forest-query reads the pickle, and hashes it first, whatever its stamp
    result = CliRunner().invoke(main, ["query", "--image-id", "1", "--method", "forest-query", "--cache-dir", str(cache)])
    assert result.exit_code == 2 and "does not match its manifest" in result.stderr
    assert "stl10sim index" in result.stderr
    assert not marker.exists()
    assert CliRunner().invoke(main, ["query", "--image-id", "1", "--cache-dir", str(cache)]).exit_code == 0
    verify = CliRunner().invoke(main, ["verify", "--cache-dir", str(cache)])
    assert verify.exit_code == 2 and "forest.pkl" in verify.stderr
    assert not marker.exists()


@pytest.mark.parametrize("victim", ["features/features.npy", "features/labels.npy", "index/topk.npy",
                                    "index/signatures.npy", "index/forest.pkl", "index/stats.npy"])
def test_truncated_artifacts_are_detected(cache, victim):
    path = cache / victim
    path.write_bytes(path.read_bytes()[:-7])
    method = ["--method", "forest-query"] if victim.endswith(".pkl") else []  # the only reader of the pickle
    result = CliRunner().invoke(main, ["query", "--image-id", "1", *method, "--cache-dir", str(cache)])
    assert result.exit_code == 2 and "rerun `stl10sim" in result.stderr


def test_swapped_artifact_is_detected(cache):
    sigs = cache / "index" / "signatures.npy"
    np.save(sigs, np.load(sigs)[::-1].copy())  # same shape and dtype, other content
    result = CliRunner().invoke(main, ["query", "--image-id", "1", "--cache-dir", str(cache)])
    assert result.exit_code == 2 and "signatures.npy does not match its manifest" in result.stderr


def test_second_writer_fails_clearly_with_no_wait(cache):
    import filelock

    with filelock.FileLock(str(cache / ".lock")):
        result = CliRunner().invoke(main, ["index", "--force", "--no-wait", "--cache-dir", str(cache)])
    assert result.exit_code == 1 and "another stl10sim command is using" in result.stderr


@pytest.mark.slow
def test_second_writer_waits_for_the_first(cache):
    import filelock

    lock = filelock.FileLock(str(cache / ".lock"))
    lock.acquire()
    proc = subprocess.Popen(_cli("index", "--force", "--cache-dir", str(cache)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert proc.poll() is None  # still waiting
    finally:
        lock.release()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "waiting for another stl10sim command" in err and "built" in out


def test_disk_full_keeps_previous_artifacts(cache, monkeypatch):
    before = {p: p.read_bytes() for p in (cache / "index").iterdir()}
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    result = CliRunner().invoke(main, ["-q", "index", "--force", "--top-k", "20", "--cache-dir", str(cache)])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert result.exit_code == 1 and "the disk is full" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    after = {p: p.read_bytes() for p in (cache / "index").iterdir() if p.is_file()}
    assert after == before  # the previous index is intact and still answers
    assert invoke("query", "--image-id", "1", "--cache-dir", str(cache)).exit_code == 0


def test_read_only_cache_dir_is_one_clear_line(cache, monkeypatch):
    before = {p: p.read_bytes() for p in (cache / "index").iterdir() if p.is_file()}

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(artifacts.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(Path, "mkdir", read_only)
    result = CliRunner().invoke(main, ["-q", "index", "--force", "--cache-dir", str(cache)])
    assert result.exit_code == 1 and "the folder is read-only" in result.stderr
    assert "--cache-dir DIR or $STL10SIM_CACHE_DIR" in result.stderr  # and where to go instead
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert {p: p.read_bytes() for p in (cache / "index").iterdir() if p.is_file()} == before


def test_weights_are_loaded_without_unpickling_code(tmp_path, cache):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"features.0.0.weight": Exploit()}))
    result = CliRunner().invoke(main, ["extract", "--weights", str(evil), "--cache-dir", str(cache)])
    assert result.exit_code == 2 and "not a PyTorch state dict" in result.stderr
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("size_kb", [48, 160, 400])
def test_a_really_full_disk_is_one_line_and_exit_1(tmp_path, size_kb):
    """On a real small file system (tmpfs; skipped where this process may not mount one), a full disk stops
    `extract` at whatever write it reaches with one line of error, exit 1, and no traceback."""
    from PIL import Image
    from stl10_fixture import make_images

    cache = tmp_path / "small"
    cache.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(cache)],
                             capture_output=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):  # CI runs as root on a machine that allows it: a real full disk must be tried there
            raise RuntimeError(f"CI must mount a small tmpfs for this test: {mounted.stderr.decode().strip()}")
        pytest.skip("this process may not mount a small file system (test_disk_full_keeps_previous_artifacts "
                    "still simulates one)")
    try:
        root = tmp_path / "photos"
        root.mkdir()
        for i, image in enumerate(make_images(np.arange(40) % 4, seed=8)):
            Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(root / f"{i:02d}.png")
        result = subprocess.run(_cli("-q", "extract", "--images", str(root), "--collection", "x", "--weights", "none",
                                     "--image-size", "64", "--cache-dir", str(cache)),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, (result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and "disk is full" in lines[0], result.stderr
        assert "Traceback" not in result.stderr
    finally:
        subprocess.run(["umount", str(cache)], capture_output=True)
