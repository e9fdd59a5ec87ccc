"""What a new user meets in the CLI in their first hour: each message and exit code they would otherwise puzzle over."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FAST, invoke
from PIL import Image
from stl10_fixture import make_images

from stl10_similarity.cli import main


def _run(*args: str) -> object:
    return CliRunner().invoke(main, list(args))


def _folder(root: Path, n: int = 6, copies: int = 0) -> Path:
    """``n`` photos below ``root``/cat and ``root``/dog, and ``copies`` near-copies of the first one."""
    images = make_images(np.arange(n) % 3, seed=12)
    for i, image in enumerate(images):
        folder = root / ("cat" if i % 2 == 0 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(folder / f"{i:04d}.png")
    first = Image.open(root / "cat" / "0000.png")
    for c in range(copies):
        first.resize((96 - 2 * c, 96 - 2 * c)).save(root / "cat" / f"copy{c}.jpg", quality=95)
    return root


@pytest.fixture
def folder_cache(tmp_path) -> Path:
    cache = tmp_path / "c"
    result = _run("-q", "extract", "--images", str(_folder(tmp_path / "photos", copies=2)), "--collection", "mine",
                  *FAST, "--cache-dir", str(cache))
    assert result.exit_code == 0, result.output
    return cache


def test_an_unknown_collection_says_which_exist(folder_cache):
    for command in (["query", "--image-id", "0"], ["index"], ["evaluate"], ["duplicates"], ["serve"]):
        result = _run(*command, "--collection", "mne", "--cache-dir", str(folder_cache))
        assert result.exit_code == 2, (command, result.output)
        assert "there is no collection 'mne'" in result.stderr and "the collections there are mine" in result.stderr
        assert "extract --images DIR --collection mne" in result.stderr and "run `stl10sim extract` first" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_failed_first_extract_leaves_no_collection_behind(tmp_path):
    (tmp_path / "empty").mkdir()
    cache = tmp_path / "c"
    result = _run("extract", "--images", str(tmp_path / "empty"), "--collection", "nothing", *FAST,
                  "--cache-dir", str(cache))
    assert result.exit_code == 2 and "holds no images" in result.stderr
    assert "nothing" not in _run("collections", "--cache-dir", str(cache)).stdout
    assert not (cache / "collections" / "nothing").exists()


def test_collections_remove(folder_cache, tmp_path):
    photos = tmp_path / "photos"
    before = sorted(p.name for p in photos.rglob("*"))
    result = _run("collections", "--remove", "mine", "--cache-dir", str(folder_cache))
    assert result.exit_code == 0 and "removed collection mine" in result.stderr
    assert "mine" not in _run("collections", "--cache-dir", str(folder_cache)).stdout
    assert sorted(p.name for p in photos.rglob("*")) == before  # the images themselves are never touched
    missing = _run("collections", "--remove", "mine", "--cache-dir", str(folder_cache))
    assert missing.exit_code == 2 and "'mine' is not a collection" in missing.stderr


def test_removing_stl10_keeps_the_download(cache):
    assert _run("collections", "--remove", "stl10", "--cache-dir", str(cache)).exit_code == 0
    assert not (cache / "features").exists() and not (cache / "index").exists()
    assert (cache / "data" / "stl10_binary").is_dir()
    assert invoke("-q", "extract", *FAST, "--cache-dir", str(cache)).exit_code == 0  # and it comes back offline


def test_debug_works_after_the_command_too(tmp_path):
    for args in (["--debug", "query", "--image-id", "0"], ["query", "--image-id", "0", "--debug"]):
        result = CliRunner().invoke(main, [*args, "--cache-dir", str(tmp_path / "empty")])
        assert "No such option" not in result.output
        assert result.exit_code == 1 and type(result.exception).__name__ == "MissingArtifactError"  # the traceback
    plain = _run("query", "--image-id", "0", "--cache-dir", str(tmp_path / "empty"))
    assert plain.exit_code == 2 and plain.stderr.startswith("Error: ")


@pytest.mark.parametrize("command, target, said", [
    (["extract", "--images", "PHOTOS", "--collection", "mine"], "stl10_similarity.ingest.update.update_folder",
     "Interrupted: finished chunks of features are kept and the collection is as it was"),
    (["download"], "stl10_similarity.sources.stl10.download", "Interrupted: the bytes downloaded so far are kept"),
    (["query", "--image-id", "0"], "stl10_similarity.session.Session.open", "Interrupted."),
])
def test_ctrl_c_says_what_this_command_keeps(tmp_path, monkeypatch, command, target, said):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    args = [str(_folder(tmp_path / "photos")) if a == "PHOTOS" else a for a in command]
    result = _run(*args, *(FAST if command[0] == "extract" else []), "--cache-dir", str(tmp_path / "c"))
    assert result.exit_code == 130 and result.stderr.strip().startswith(said), result.output
    if command[0] != "download":
        assert "download" not in result.stderr


def test_pictures_follow_the_umask_and_their_suffix(folder_cache, tmp_path):
    old = os.umask(0o022)
    try:
        for name, magic in (("grid.png", b"\x89PNG"), ("grid.jpg", b"\xff\xd8"), ("grid.webp", b"RIFF")):
            out = tmp_path / name
            result = _run("-q", "query", "--collection", "mine", "--image-id", "0", "--png", str(out),
                          "--cache-dir", str(folder_cache))
            assert result.exit_code == 0, result.output
            assert out.read_bytes()[:4].startswith(magic), name
            assert out.stat().st_mode & 0o777 == 0o644, oct(out.stat().st_mode)
    finally:
        os.umask(old)
    bad = _run("query", "--collection", "mine", "--image-id", "0", "--png", str(tmp_path / "grid.gif"),
               "--cache-dir", str(folder_cache))
    assert bad.exit_code == 2 and "--png" in bad.stderr and ".png, .jpg" in bad.stderr
    assert not (tmp_path / "grid.gif").exists()


def test_grid_captions_carry_the_path_below_the_folder(folder_cache, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    captions: list[str] = []
    original = Axes.set_xlabel
    monkeypatch.setattr(Axes, "set_xlabel", lambda self, text, *a, **k: (captions.append(text), original(self, text, *a, **k))[1])
    assert _run("-q", "query", "--collection", "mine", "--image-id", "0", "-k", "3", "--png", str(tmp_path / "g.png"),
                "--cache-dir", str(folder_cache)).exit_code == 0
    assert captions[0].startswith("query cat/")
    assert all(c.split("\n")[0].split(" ", 1)[1].split("/")[0] in ("cat", "dog") for c in captions[1:])


def test_image_queries_say_the_model_is_loading(folder_cache, tmp_path):
    result = _run("query", "--collection", "mine", "--image", str(tmp_path / "photos" / "dog" / "0001.png"),
                  "--cache-dir", str(folder_cache))
    assert result.exit_code == 0 and "loading the model" in result.stderr


def test_download_shows_progress_while_verifying_and_unpacking(tmp_path, archive):
    result = _run("download", "--archive", str(archive), "--cache-dir", str(tmp_path / "c"))
    assert result.exit_code == 2  # the test archive is not the official one: refused after verifying it
    assert "verify the archive (MD5)" in result.stderr
    unverified = _run("download", "--archive", str(archive), "--no-verify", "--cache-dir", str(tmp_path / "c"))
    assert unverified.exit_code == 0 and "unpack STL-10" in unverified.stderr


def test_serve_on_a_busy_port_says_so_and_exits_2(folder_cache):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _run("serve", "--collection", "mine", "--port", str(port), "--cache-dir", str(folder_cache))
    assert result.exit_code == 2, result.output
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr and f"--port {port + 1}" in result.stderr
    assert "serving" not in result.stderr


def test_duplicates_are_drawn(folder_cache, tmp_path):
    out = tmp_path / "dups.png"
    result = _run("duplicates", "--collection", "mine", "--png", str(out),
                  "--cache-dir", str(folder_cache))
    assert result.exit_code == 0, result.output
    groups = [line for line in result.stdout.splitlines() if line.startswith("group ")]
    assert groups and "cat/copy0.jpg" in result.stdout
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width >= 3 * 100 and img.height >= len(groups) * 150
    none = _run("duplicates", "--collection", "mine", "--kind", "exact", "--png", str(tmp_path / "none.png"),
                "--cache-dir", str(folder_cache))
    assert none.exit_code == 0 and Image.open(tmp_path / "none.png").size[0] > 0


def test_broken_files_are_named_without_python_reprs(tmp_path):
    root = _folder(tmp_path / "photos")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    (root / "cat" / "text.jpg").write_text("not a picture")
    result = _run("extract", "--images", str(root), "--collection", "mine", *FAST, "--cache-dir", str(tmp_path / "c"))
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 2 and not any("<_io" in w or "object at 0x" in w for w in warnings), warnings


def test_exit_codes_are_documented():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    reliability = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text()
    for code in ("0", "1", "2", "130"):
        assert f"{code} " in reliability.split("## Exit codes")[1]
    assert "busy port" in reliability.split("## Exit codes")[1] and "Exit codes" in readme
