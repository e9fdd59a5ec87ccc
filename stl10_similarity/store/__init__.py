"""The store: the only code that reads or writes a collection's manifests (a test keeps it so).

A collection's home holds two stages, ``features/`` and ``index/`` (``paths``), each a set of artifacts and a
``manifest.json`` written last (``artifacts``: atomic writes, SHA-256, stamps). Here each manifest is read
into a :class:`Manifest`: the dict as written, with the fields other stages rely on typed. The protocol between
the stages is declared here:

- the features manifest records the source (``source``: what ``sources.reopen`` opens again) and, for a
  collection kept up to date, its :class:`Lineage`: a random id for the collection's life, the *generation*
  (the update count; ``versions.npy`` says which generation last wrote each row) and the next id to give;
- the index manifest records the SHA-256 of the features manifest it was built from (``index.py`` compares it:
  another digest means a stale index), the lineage it was built at (an update in place redoes only rows of later
  generations) and, for a sharded index, its shards (:class:`ShardEntry`: folder, rows, their manifest's digest).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stl10_similarity.errors import IntegrityError, Stl10SimError
from stl10_similarity.store.artifacts import MANIFEST, manifest_digest, read_manifest, write_manifest
from stl10_similarity.store.paths import COLLECTIONS, features_dir, index_dir

FEATURES_STAGE, INDEX_STAGE = "extract", "index"
EXTRACT_CMD, INDEX_CMD = "stl10sim extract", "stl10sim index"


@dataclass(frozen=True)
class Lineage:
    """Where a collection kept up to date stands: its life's id, its update count, the next image id to give."""

    lineage: str
    generation: int
    next_id: int


@dataclass(frozen=True)
class ShardEntry:
    """One shard of a sharded index: its folder below ``index/``, its rows ``[lo, hi)``, its manifest's digest."""

    folder: str
    lo: int
    hi: int
    manifest_sha256: str

    def record(self) -> dict[str, Any]:
        return {"folder": self.folder, "rows": [self.lo, self.hi], "manifest_sha256": self.manifest_sha256}


class Manifest(dict):
    """A stage's manifest exactly as written (every recorded field), with the fields the stages rely on typed."""

    @property
    def params(self) -> dict[str, Any]:
        return self["params"]

    @property
    def lineage(self) -> Lineage | None:
        """The collection's lineage (folder collections; None for a source that is extracted whole)."""
        recorded = self.get("collection")
        if not recorded:
            return None
        return Lineage(str(recorded["lineage"]), int(recorded["generation"]), int(recorded["next_id"]))

    @property
    def source(self) -> dict[str, Any]:
        """The source a features manifest was made from (manifests before sources existed named only the data dir)."""
        inputs = self.get("inputs", {})
        if "source" in inputs:
            return inputs["source"]
        params = self["params"]
        return {"kind": "stl10", "data_dir": inputs["data_dir"], "split": params["split"], "limit": params["limit"],
                "parts": self.get("parts")}

    @property
    def shards(self) -> list[ShardEntry]:
        """A sharded index's shards, in row order (empty for an ordinary index)."""
        return [ShardEntry(str(e["folder"]), int(e["rows"][0]), int(e["rows"][1]), str(e["manifest_sha256"]))
                for e in self.get("shards") or ()]


def features_manifest(home: Path, make_cmd: str = EXTRACT_CMD) -> Manifest:
    """The collection's features manifest, or an error naming ``make_cmd``."""
    return Manifest(read_manifest(features_dir(home), stage=FEATURES_STAGE, make_cmd=make_cmd))


def index_manifest(home: Path) -> Manifest:
    return Manifest(read_manifest(index_dir(home), stage=INDEX_STAGE, make_cmd=INDEX_CMD))


def shard_manifest(home: Path, entry: ShardEntry) -> Manifest:
    """A shard's manifest, checked to be the one its index's manifest lists."""
    folder = index_dir(home) / entry.folder
    manifest = Manifest(read_manifest(folder, stage=INDEX_STAGE, make_cmd=INDEX_CMD))
    if manifest_digest(folder) != entry.manifest_sha256:
        raise IntegrityError(f"{folder} is not the shard its index was built with: run `{INDEX_CMD} --force`")
    return manifest


def has_features(home: Path) -> bool:
    return (features_dir(home) / MANIFEST).is_file()


def has_index(home: Path) -> bool:
    return (index_dir(home) / MANIFEST).is_file()


def features_digest(home: Path) -> str:
    """The SHA-256 of the features manifest: what an index records as its input."""
    return manifest_digest(features_dir(home))


def index_digest(home: Path) -> str:
    return manifest_digest(index_dir(home))


def write_features_manifest(home: Path, **fields: Any) -> Manifest:
    """Write the features manifest last, once its artifacts are committed (``artifacts.write_manifest``)."""
    return Manifest(write_manifest(features_dir(home), stage=FEATURES_STAGE, **fields))


def write_index_manifest(home: Path, shard: str | None = None, **fields: Any) -> Manifest:
    """Write the index's manifest (or, with ``shard``, that shard's) last, once its artifacts are committed."""
    folder = index_dir(home) if shard is None else index_dir(home) / shard
    return Manifest(write_manifest(folder, stage=INDEX_STAGE, **fields))


def shard_entry(home: Path, shard: str, lo: int, hi: int) -> ShardEntry:
    """How the index's manifest lists a shard just written."""
    return ShardEntry(shard, lo, hi, manifest_digest(index_dir(home) / shard))


def retire_index_manifest(home: Path) -> None:
    """Make the index "not built" before writing one in parts (a sharded build): its manifest goes first."""
    (index_dir(home) / MANIFEST).unlink(missing_ok=True)


def remove_unlisted(folder: Path, manifest: Manifest) -> None:
    """Artifacts and shard folders of an earlier layout (unsharded, or another shard count) that ``manifest``,
    just written, doesn't list."""
    import shutil

    keep = {entry.get("file", name) for name, entry in manifest["artifacts"].items()} | {MANIFEST}
    folders = {entry.folder for entry in manifest.shards}
    for path in folder.iterdir():
        if path.is_dir() and path.name.startswith("shard_") and path.name not in folders:
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.suffix in (".npy", ".pkl") and path.name not in keep:
            path.unlink(missing_ok=True)


def features_arrays(home: Path, *names: str) -> list[Any]:
    """The named arrays of a collection's features stage (``features``, ``labels``, ``keys``, ``ids`` ...),
    verified against the manifest and memory-mapped: how scripts outside the library read a collection."""
    from stl10_similarity.store.artifacts import load_npy

    manifest = features_manifest(home)
    return [load_npy(features_dir(home), manifest, name, make_cmd=EXTRACT_CMD) for name in names]


@contextlib.contextmanager
def forgotten_if_failed(home: Path) -> Iterator[None]:
    """Around what makes or updates a collection (a folder extraction, an import): when it fails, a folder it
    left with nothing in it to resume goes too, so no empty collection is listed."""
    try:
        yield
    except Stl10SimError:
        forget_if_empty(home)
        raise


def forget_if_empty(home: Path) -> None:
    """Remove a collection's folder that a failed first extraction left with nothing to resume (no features, no
    finished chunks), so it isn't listed as a collection."""
    if home.parent.name != COLLECTIONS or has_features(home):
        return
    partial = features_dir(home) / "partial"
    if partial.is_dir() and any(partial.iterdir()):
        return  # finished chunks: rerunning resumes them
    shutil.rmtree(home, ignore_errors=True)
