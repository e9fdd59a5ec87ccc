"""The index stage's state: the parameters an index records, whether the one on disk fits its features and
parameters (current, stale, missing or corrupt), and what a build reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity import store
from stl10_similarity.errors import InputError, IntegrityError, MissingArtifactError
from stl10_similarity.index.assign import ASSIGNMENT
from stl10_similarity.index.sets import SetRepresentation
from stl10_similarity.index.signatures import SCHEME, SEED
from stl10_similarity.params import IndexParams
from stl10_similarity.store import Manifest
from stl10_similarity.store.artifacts import load_npy, verified_path
from stl10_similarity.store.paths import index_dir

MAKE_CMD = store.INDEX_CMD
CHUNK_ROWS = 65536
ARTIFACTS = {"topk", "topk_bits", "sets", "vocabulary", "signatures", "stats", "token_table", "tree_keys",
             "tree_order", "projection", "projected", "forest", "ids"}
SHARED = {"vocabulary", "stats", "token_table"}  # a sharded index's own artifacts; each shard holds ARTIFACTS
# an index whose vocabulary was fitted on this many times fewer images than the collection now holds says so
OUTGROWN_FACTOR = 4


def index_params(params: IndexParams) -> dict[str, Any]:
    """What decides the index's content: recorded in its manifest and in every query's params."""
    return {**asdict(params), "scheme": SCHEME, "seed": SEED, "token": "str(token).encode()",
            "assignment": ASSIGNMENT}


def params_of(recorded: dict[str, Any]) -> IndexParams:
    """The :class:`IndexParams` in a recorded ``index_params`` dict."""
    return IndexParams(**{f.name: recorded[f.name] for f in fields(IndexParams)})


def vocabulary_record(rep: SetRepresentation, vocabulary: np.ndarray, fitted_on: int) -> dict[str, Any]:
    """What the manifest (and every query's params) says about the sets: kind, universe, training size."""
    return {"kind": rep.name, "universe": rep.universe(vocabulary), "fitted_on": fitted_on}


@dataclass(frozen=True)
class IndexResult:
    folder: Path
    n: int
    seconds: float
    cached: bool
    manifest: dict[str, Any]


def _inputs(home: Path) -> dict[str, str]:
    """What an index is built from: the features manifest, by digest."""
    return {"features_manifest_sha256": store.features_digest(home)}


def shard_count(manifest: dict[str, Any]) -> int:
    """How many shards an index manifest describes (1: an ordinary index)."""
    return len(manifest.get("shards") or ()) or 1


def _fits(manifest: dict[str, Any], params: dict[str, Any], inputs: dict[str, str], shards: int | None = None) -> bool:
    """False for other parameters, other features, another shard count (when given), or an index from an older
    version of the layout."""
    expected = SHARED if manifest.get("shards") else ARTIFACTS
    return manifest.get("params") == params and manifest.get("inputs") == inputs and \
        set(manifest.get("artifacts", ())) == expected and (shards is None or shard_count(manifest) == shards)


def _cached(home: Path, params: dict[str, Any], inputs: dict[str, str], shards: int) -> Manifest | None:
    folder = index_dir(home)
    try:
        manifest = store.index_manifest(home)
        if not _fits(manifest, params, inputs, shards):
            return None
        for name in manifest["artifacts"]:
            verified_path(folder, manifest, name, make_cmd=MAKE_CMD)
        for entry in manifest.shards:
            shard = store.shard_manifest(home, entry)
            for name in shard["artifacts"]:
                verified_path(folder / entry.folder, shard, name, make_cmd=MAKE_CMD)
    except (MissingArtifactError, IntegrityError, KeyError, TypeError):
        return None
    return manifest


def index_state(home: Path, params: IndexParams | None = None) -> str:
    """``current`` (built from today's features, with ``params`` when given), ``stale``, ``missing``, or
    ``corrupt`` (an unreadable manifest: reported, never silently rebuilt)."""
    try:
        manifest = store.index_manifest(home)
    except IntegrityError:
        return "corrupt"
    except MissingArtifactError:
        return "missing"
    try:
        inputs = _inputs(home)
    except OSError:
        return "stale"  # no features manifest to compare with
    try:  # without ``params``: its own parameters as today records them (an older scheme or assignment is stale)
        wanted = index_params(params if params is not None else params_of(manifest["params"]))
    except (KeyError, TypeError, InputError):
        return "stale"
    return "current" if _fits(manifest, wanted, inputs) else "stale"


def last_params(home: Path) -> IndexParams:
    """The parameters the index was last built with (defaults if there is none, or it is unreadable)."""
    try:
        return params_of(store.index_manifest(home)["params"])
    except (MissingArtifactError, IntegrityError, KeyError, TypeError, InputError):
        return IndexParams()


def last_shards(home: Path) -> int:
    """How many shards the index was last built with (1 if there is none, or it is unreadable)."""
    try:
        return shard_count(store.index_manifest(home))
    except (MissingArtifactError, IntegrityError):
        return 1


def describe_params(params: IndexParams) -> str:
    """The index parameters in one phrase, for notes."""
    sets = f"{params.set_size} nearest of {params.centroids or 'auto'} centroids" if params.sets == "centroids" \
        else f"top {params.top_k} {params.basis} dims"
    return f"sets: {sets}, num_perm {params.num_perm}, trees {params.trees}"


def feature_ids(folder: Path, manifest: dict[str, Any], n: int) -> np.ndarray:
    """Each feature row's image id (a folder collection's ids have gaps where images were removed)."""
    if "ids" not in manifest.get("artifacts", {}):
        return np.arange(n, dtype=np.int64)
    return np.asarray(load_npy(folder, manifest, "ids", make_cmd=store.EXTRACT_CMD, mmap=False))
