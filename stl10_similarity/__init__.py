"""stl10sim: image similarity search over STL-10 with MobileNetV2 features, MinHash and an LSH forest.

The library's front door (imported on first use, so ``import stl10_similarity`` stays cheap)::

    from stl10_similarity import Session
    session = Session.open(home)
    result = session.query(image_id=42, k=5)

See docs/python-api.md.
"""

from __future__ import annotations

from typing import Any

# name -> "module" (the name is that module's attribute) or "module:" (the name is the module itself). This is
# the API the faces (cli.py, server.py) use: a test keeps them to it, params, errors and progress.
_EXPORTS = {
    "Session": "session", "Access": "access", "QueryResult": "search", "Match": "search", "QueryInfo": "search",
    "ExtractParams": "params", "IndexParams": "params", "SearchParams": "params", "EvaluateParams": "params",
    "EngineParams": "params", "ShardParams": "params",
    "Stl10SimError": "errors", "InputError": "errors", "ParameterError": "errors", "ImageGoneError": "errors",
    "NoImagesError": "errors", "ImageError": "sources.images", "ImageTooLarge": "sources.images",
    "decode_square": "sources.images", "import_features": "ingest.importing", "resolve_cache_dir": "store.paths",
    "resolve_data_dir": "store.paths", "collection_home": "store.paths", "update_folder": "ingest.update",
    "params_as_before": "ingest.update", "recorded_folder": "ingest.update",
    "summary_line": "ingest.update", "extract": "ingest.extract", "runner_for": "ingest.engines",
    "build_index": "index", "find_duplicates": "duplicates", "DuplicateGroup": "duplicates",
    "DuplicatesParams": "params", "undo_moves": "duplicates", "UndoReport": "duplicates", "Move": "duplicates",
    "existing_collection": "collections",
    "list_collections": "collections", "remove_collection": "collections", "verify_collection": "collections",
    "features_manifest": "store", "features_digest": "store", "index_digest": "store", "json_text": "store.artifacts",
    "json_ready": "store.artifacts", "picture_format": "grid", "run_bench": "bench", "bench_features": "bench",
    "run_extract_bench": "extract_bench", "stl10": "sources.stl10:", "evaluate": "evaluate:",
}
__all__ = sorted(_EXPORTS)


def _version() -> str:
    """One version source: the package metadata pyproject.toml writes (read on first use: importing
    importlib.metadata costs ~25 ms, a tenth of a whole query process)."""
    from importlib import metadata

    try:
        return metadata.version("stl10sim")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stl10_similarity' has no attribute {name!r}")
    from importlib import import_module

    where = _EXPORTS[name]
    found = import_module(f".{where.rstrip(':')}", __name__)
    return found if where.endswith(":") else getattr(found, name)
