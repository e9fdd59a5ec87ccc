"""stl10sim: image similarity search over STL-10 with MobileNetV2 features, MinHash and an LSH forest.

The library's front door (imported on first use, so ``import stl10_similarity`` stays cheap)::

    from stl10_similarity import Session
    session = Session.open(home)
    result = session.query(image_id=42, k=5)

See docs/python-api.md.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Session": "session", "QueryResult": "search", "Match": "search", "QueryInfo": "search",
    "ExtractParams": "params", "IndexParams": "params", "SearchParams": "params", "EvaluateParams": "params",
    "Stl10SimError": "errors", "InputError": "errors", "ParameterError": "errors", "ImageGoneError": "errors",
    "NoImagesError": "errors", "ImageError": "sources.images", "decode_square": "sources.images",
    "import_features": "sources.imported", "resolve_cache_dir": "store.paths", "resolve_data_dir": "store.paths",
    "collection_home": "store.paths", "update_folder": "ingest.update", "EngineParams": "params",
    "ShardParams": "params",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stl10_similarity' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
