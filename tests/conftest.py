from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from stl10_fixture import write_stl10

from stl10_similarity.cli import main

FAST = ["--weights", "none", "--image-size", "64", "--batch-size", "16"]


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    """Never touch the user's cache, data dir or the network."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("STL10SIM_CACHE_DIR", str(home / "cache"))
    monkeypatch.delenv("STL10SIM_DATA_DIR", raising=False)
    monkeypatch.setenv("STL10SIM_URL", "http://127.0.0.1:9/stl10_binary.tar.gz")  # discard port: refused at once
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setattr("stl10_similarity.sources.fetch.RETRY_DELAYS", (0.0, 0.0, 0.0))  # retries, without the waiting


def invoke(*args: str, **kwargs):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, **kwargs)


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> Path:
    return write_stl10(tmp_path_factory.mktemp("stl10src"))


@pytest.fixture(scope="session")
def built_cache(tmp_path_factory, archive) -> Path:
    """A cache dir after download, extract (random weights, 64 px) and index: built once per session."""
    cache = tmp_path_factory.mktemp("built") / "cache"
    runner = CliRunner()
    for args in (["download", "--archive", str(archive), "--no-verify"], ["extract", *FAST], ["index"]):
        result = runner.invoke(main, ["-q", *args, "--cache-dir", str(cache)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return cache


@pytest.fixture
def cache(built_cache, tmp_path) -> Path:
    """A private copy of the built cache that a test may change."""
    copy = tmp_path / "cache"
    shutil.copytree(built_cache, copy)
    return copy
