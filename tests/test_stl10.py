"""STL-10 on disk: the reader matches torchvision, download verifies once and never half-writes."""

from __future__ import annotations

import functools
import http.server
import shutil
import tarfile
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import invoke
from stl10_fixture import write_stl10

from stl10_similarity.cli import main
from stl10_similarity.sources import stl10


def test_reader_gives_torchvision_pixels(tmp_path):
    from torchvision.datasets import STL10

    write_stl10(tmp_path)

    class Unverified(STL10):  # our fixture is not the official data, so skip torchvision's MD5 check
        def _check_integrity(self) -> bool:
            return True

    for split in ("train", "test"):
        reference = Unverified(str(tmp_path), split=split)
        collection = stl10.open_source(tmp_path, split)
        assert np.array_equal(collection.images(0, collection.size), reference.data)
        assert np.array_equal(collection.labels(), reference.labels)


def test_collection_spans_parts_in_order(tmp_path):
    write_stl10(tmp_path, n_train=3, n_test=4, n_unlabeled=2)
    both = stl10.open_source(tmp_path, "all")
    train = stl10.open_source(tmp_path, "train")
    test = stl10.open_source(tmp_path, "test")
    assert both.size == 9
    assert np.array_equal(both.images(2, 5), np.concatenate([train.images(2, 3), test.images(0, 2)]))
    assert list(both.labels()) == [0, 1, 2, 0, 1, 2, 3, -1, -1]
    assert stl10.open_source(tmp_path, "train+test", limit=5).labels().shape == (5,)


def test_bad_label_values_are_refused(tmp_path):
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "train_y.bin").write_bytes(bytes([0] * 40))
    with pytest.raises(stl10.DataError, match="labels are 1..10"):
        stl10.open_source(tmp_path, "train")


def test_truncated_image_file_is_refused(tmp_path):
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(stl10.DataError, match="not a whole number"):
        stl10.open_source(tmp_path, "test")


def _contents(data):
    """What the data dir holds besides its lock file."""
    return sorted(p.name for p in data.iterdir() if p.name != ".lock")


def test_archive_not_matching_checksum_is_refused_and_nothing_unpacked(tmp_path, archive):
    data = tmp_path / "data"
    result = CliRunner().invoke(main, ["download", "--archive", str(archive), "--data-dir", str(data)])
    assert result.exit_code == 2
    assert "official STL-10 checksum" in result.stderr and "--no-verify" in result.stderr
    assert not data.exists() or _contents(data) == []


def test_no_verify_warns_and_records(tmp_path, archive):
    data = tmp_path / "data"
    result = invoke("download", "--archive", str(archive), "--no-verify", "--data-dir", str(data))
    assert result.exit_code == 0
    assert "warning" in result.stderr and "not the official" in result.stderr
    assert (data / "stl10_binary" / "train_X.bin").is_file()
    record = stl10.verification_record(data)
    assert record is not None and record["verified_md5"] is False
    assert _contents(data) == ["stl10_binary"]  # no staging folders left


def test_second_download_uses_the_record(tmp_path, archive, monkeypatch):
    data = tmp_path / "data"
    invoke("download", "--archive", str(archive), "--no-verify", "--data-dir", str(data))
    monkeypatch.setattr(stl10, "md5_file", lambda p: pytest.fail("re-hashed the data"))
    result = invoke("download", "--no-verify", "--data-dir", str(data))
    assert result.exit_code == 0 and "cached" in result.stdout


def test_verify_refuses_files_already_in_place(tmp_path):
    write_stl10(tmp_path / "data")
    result = CliRunner().invoke(main, ["download", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2 and "do not match the official checksums" in result.stderr


def test_offline_download_fails_with_one_line_and_leaves_nothing(tmp_path):
    data = tmp_path / "data"
    result = CliRunner().invoke(main, ["download", "--data-dir", str(data)])
    assert result.exit_code == 1
    *retries, error = result.stderr.strip().splitlines()
    assert [line.split("; ")[-1] for line in retries] == [f"retrying in 0 s (retry {i} of 3) ..." for i in (1, 2, 3)]
    assert error.startswith("Error: cannot download STL-10")
    assert "--archive" in error and str(data) in error and "stl10_binary.tar.gz" in error
    quiet = CliRunner().invoke(main, ["-q", "download", "--data-dir", str(data)])
    assert quiet.exit_code == 1 and quiet.stderr.strip() == error
    assert _contents(data) == []


def test_archive_placed_in_data_dir_is_used(tmp_path, archive):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(archive, data / "stl10_binary.tar.gz")
    assert invoke("download", "--no-verify", "--data-dir", str(data)).exit_code == 0
    assert (data / "stl10_binary" / "test_y.bin").is_file()


def test_download_over_http(tmp_path, archive, monkeypatch):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("STL10SIM_URL", f"http://127.0.0.1:{server.server_port}/{archive.name}")
        data = tmp_path / "data"
        refused = CliRunner().invoke(main, ["download", "--data-dir", str(data)])
        assert refused.exit_code == 2 and not (data / "stl10_binary").exists()
        result = invoke("download", "--no-verify", "--data-dir", str(data))
        assert result.exit_code == 0 and "network" in result.stdout
        assert stl10.open_source(data, "train+test").size == 100
    finally:
        server.shutdown()


def test_archive_with_unsafe_paths_is_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "x.txt"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="stl10_binary/../../escape.txt")
    result = CliRunner().invoke(main, ["download", "--archive", str(evil), "--no-verify", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2 and "unsafe" in result.stderr
    assert not (tmp_path / "escape.txt").exists()


def test_not_an_archive_is_refused(tmp_path):
    bogus = tmp_path / "stl10_binary.tar.gz"
    bogus.write_bytes(b"this is not a tarball " * 50)
    result = CliRunner().invoke(main, ["download", "--archive", str(bogus), "--no-verify", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2 and "not a readable" in result.stderr
