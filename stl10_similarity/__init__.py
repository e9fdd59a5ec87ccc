"""stl10sim: image similarity search over STL-10 with MobileNetV2 features, MinHash and an LSH forest.

The library's front door (imported on first use, so ``import stl10_similarity`` stays cheap)::

    from stl10_similarity import Session
    session = Session.open(home)
    result = session.query(image_id=42, k=5)

See docs/python-api.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # what type checkers see (the faces are checked against it); at run time, __getattr__
    from stl10_similarity import evaluate
    from stl10_similarity.access import Access
    from stl10_similarity.bench import bench_features, run_bench
    from stl10_similarity.collections import (
        existing_collection,
        list_collections,
        remove_collection,
        verify_collection,
    )
    from stl10_similarity.duplicates import DuplicateGroup, Move, UndoReport, find_duplicates, undo_moves
    from stl10_similarity.errors import ImageGoneError, InputError, NoImagesError, ParameterError, Stl10SimError
    from stl10_similarity.extract_bench import run_extract_bench
    from stl10_similarity.grid import picture_format
    from stl10_similarity.index import build_index
    from stl10_similarity.ingest.engines import runner_for
    from stl10_similarity.ingest.extract import extract
    from stl10_similarity.ingest.importing import import_features
    from stl10_similarity.ingest.update import params_as_before, recorded_folder, summary_line, update_folder
    from stl10_similarity.params import (
        DuplicatesParams,
        EngineParams,
        EvaluateParams,
        ExtractParams,
        IndexParams,
        SearchParams,
        ShardParams,
    )
    from stl10_similarity.search import Match, QueryInfo, QueryResult
    from stl10_similarity.session import Session
    from stl10_similarity.sources import stl10
    from stl10_similarity.sources.images import ImageError, ImageTooLarge, decode_square
    from stl10_similarity.store import features_digest, features_manifest, index_digest
    from stl10_similarity.store.artifacts import json_ready, json_text
    from stl10_similarity.store.paths import collection_home, resolve_cache_dir, resolve_data_dir



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
