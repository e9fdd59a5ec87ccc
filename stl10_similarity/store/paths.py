"""Where things live: one resolver for the cache dir, one for the data dir, and the cache layout."""

from __future__ import annotations

import os
import re
from pathlib import Path

from stl10_similarity.errors import ParameterError
from stl10_similarity.params import DEFAULT_COLLECTION

CACHE_ENV = "STL10SIM_CACHE_DIR"
COLLECTIONS = "collections"
COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
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


def collection_home(cache_dir: Path, name: str = DEFAULT_COLLECTION) -> Path:
    """Where a collection's artifacts live: the cache dir itself for STL-10 (as always), else ``collections/NAME``."""
    if not COLLECTION_NAME.fullmatch(name or ""):
        raise ParameterError("collection", f"{name!r} is not a collection name: use 1-64 letters, digits, '-' or '_', "
                                           "starting with a letter or digit")
    return cache_dir if name == DEFAULT_COLLECTION else cache_dir / COLLECTIONS / name


def collection_names(cache_dir: Path) -> list[str]:
    """Every collection with a folder in the cache dir (STL-10 first, when it has been extracted)."""
    names = [DEFAULT_COLLECTION] if (cache_dir / "features").is_dir() else []
    folder = cache_dir / COLLECTIONS
    if folder.is_dir():
        names += sorted(p.name for p in folder.iterdir() if p.is_dir() and COLLECTION_NAME.fullmatch(p.name))
    return names


def features_dir(home: Path) -> Path:
    """A collection's features stage, in its home (``collection_home``)."""
    return home / "features"


def index_dir(home: Path) -> Path:
    return home / "index"
