"""What ``stl10sim collections`` lists: each collection's source, size and index state, read from its manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import Stl10SimError
from .extract import load_manifest, source_record
from .index import index_state
from .paths import collection_home, collection_names


def describe_source(record: dict[str, Any]) -> str:
    if record.get("kind") == "folder":
        return f"folder {record['root']}"
    if record.get("kind") == "stl10":
        return f"STL-10 {record.get('split')} in {record.get('data_dir')}"
    return str(record.get("kind"))


def list_collections(cache_dir: Path) -> list[dict[str, Any]]:
    """One row per collection: ``{"name", "source", "images", "skipped", "index"}`` (index: current, stale,
    missing or corrupt; a collection whose features are unreadable says so in ``source``)."""
    rows = []
    for name in collection_names(cache_dir):
        home = collection_home(cache_dir, name)
        try:
            manifest = load_manifest(home)
            record = source_record(manifest)
            rows.append({"name": name, "source": describe_source(record), "images": int(manifest["n"]),
                         "skipped": len(manifest.get("skipped", [])), "index": index_state(home)})
        except (Stl10SimError, KeyError, TypeError) as exc:
            rows.append({"name": name, "source": f"no usable features ({exc})", "images": 0, "skipped": 0,
                         "index": "missing"})
    return rows
