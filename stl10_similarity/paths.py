"""Where things live: one resolver for the cache dir, one for the data dir, and the cache layout."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "STL10SIM_CACHE_DIR"
DATA_ENV = "STL10SIM_DATA_DIR"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``--cache-dir``, else ``$STL10SIM_CACHE_DIR``, else the platform's user cache dir."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("stl10sim", appauthor=False))


def resolve_data_dir(
    data_dir: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """``--data-dir``, else ``$STL10SIM_DATA_DIR``, else ``data/`` under the cache dir."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return resolve_cache_dir(cache_dir) / "data"


def features_dir(cache_dir: Path) -> Path:
    return cache_dir / "features"


def index_dir(cache_dir: Path) -> Path:
    return cache_dir / "index"
