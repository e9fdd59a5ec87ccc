"""Collections as a whole: which exist (``stl10sim collections``), finding one by name, removing one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from stl10_similarity import store
from stl10_similarity.errors import InputError, MissingArtifactError, ParameterError, Stl10SimError
from stl10_similarity.index import index_state
from stl10_similarity.params import DEFAULT_COLLECTION
from stl10_similarity.sources import describe_record
from stl10_similarity.store.artifacts import cache_lock, verify_stage
from stl10_similarity.store.paths import collection_home, collection_names, features_dir, index_dir


def list_collections(cache_dir: Path) -> list[dict[str, Any]]:
    """One row per collection: ``{"name", "source", "images", "skipped", "index"}`` (index: current, stale,
    missing or corrupt; a collection whose features are unreadable says so in ``source``)."""
    rows = []
    for name in collection_names(cache_dir):
        home = collection_home(cache_dir, name)
        try:
            manifest = store.features_manifest(home)
            record = manifest.source
            rows.append({"name": name, "source": describe_record(record), "images": int(manifest["n"]),
                         "skipped": len(manifest.get("skipped", [])), "index": index_state(home)})
        except (Stl10SimError, KeyError, TypeError) as exc:
            # the stage's own advice names STL-10's command; a collection of one's own is remade by its own
            why = str(exc) if name == DEFAULT_COLLECTION else \
                f"{str(exc).split(':')[0]}: `stl10sim extract --images DIR --collection {name}` makes them (an " \
                f"interrupted first extract resumes)"
            rows.append({"name": name, "source": f"no usable features ({why})", "images": 0, "skipped": 0,
                         "index": "missing"})
    return rows


def existing_collection(cache_dir: Path, name: str) -> Path:
    """The home of collection ``name``, which must exist (STL-10 always may: its commands say how to make it).

    Raises:
        MissingArtifactError: no collection of that name; the message lists the ones there are.
    """
    home = collection_home(cache_dir, name)
    names = collection_names(cache_dir)
    if name == DEFAULT_COLLECTION and names and DEFAULT_COLLECTION not in names:
        # STL-10 is the default; where only collections of one's own exist, name them rather than ask for STL-10
        raise MissingArtifactError(f"STL-10 has not been extracted in {cache_dir}; the collections there are "
                                   f"{', '.join(names)}: give --collection NAME (`stl10sim extract` makes STL-10)")
    if name == DEFAULT_COLLECTION or home.is_dir():
        return home
    there = f"the collections there are {', '.join(names)} (`stl10sim collections`)" if names else \
        "there are no collections there yet"
    raise MissingArtifactError(f"there is no collection {name!r} in {cache_dir}: {there}; "
                               f"`stl10sim extract --images DIR --collection {name}` makes it")


def remove_collection(cache_dir: Path, name: str, *, wait: bool = True) -> Path:
    """Delete a collection's artifacts (never the images it was made from), under its lock; return its home.

    For STL-10 that is the features and the index in the cache dir; the downloaded dataset stays.

    Raises:
        ParameterError: no collection of that name.
    """
    home = collection_home(cache_dir, name)
    if name not in collection_names(cache_dir):
        names = collection_names(cache_dir)
        raise ParameterError("remove", f"{name!r} is not a collection in {cache_dir}"
                             + (f": the collections there are {', '.join(names)}" if names else ""))
    with cache_lock(home, wait=wait):
        if name == DEFAULT_COLLECTION:
            for folder in (index_dir(home), features_dir(home)):  # the index first: never an index without features
                shutil.rmtree(folder, ignore_errors=True)
        else:
            doomed = home.with_name(f".removing-{name}")  # one rename, then the slow part: never half a collection
            shutil.rmtree(doomed, ignore_errors=True)
            home.rename(doomed)
    if name != DEFAULT_COLLECTION:
        shutil.rmtree(doomed, ignore_errors=True)
    return home


def verify_collection(home: Path) -> list[tuple[str, str | None]]:
    """Hash every artifact of a collection's features and index (when built), whatever their stamps:
    ``(path, None)`` for each that matches its manifest, ``(path, why)`` for each that does not.

    Raises:
        MissingArtifactError: the collection has no features yet.
    """
    report = verify_stage(features_dir(home), store.features_manifest(home), make_cmd=store.EXTRACT_CMD)
    if store.has_index(home):
        manifest = store.index_manifest(home)
        report += verify_stage(index_dir(home), manifest, make_cmd=store.INDEX_CMD)
        for entry in manifest.shards:
            folder = index_dir(home) / entry.folder
            try:
                shard = store.shard_manifest(home, entry)
            except InputError as exc:
                report.append((str(folder), str(exc)))
                continue
            report += verify_stage(folder, shard, make_cmd=store.INDEX_CMD)
    return report
