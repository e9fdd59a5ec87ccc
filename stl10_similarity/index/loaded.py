"""A built index as arrays: opened and verified from disk (memory-mapped or read), one piece or shards
(``LoadedIndex``, ``ShardedIndex``), or built in memory without touching disk (``index_in_memory``)."""

from __future__ import annotations

import abc
import pickle
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity import store
from stl10_similarity.errors import IntegrityError, ParameterError, StaleArtifactError
from stl10_similarity.index.forest import BandCodes, build_forest, prefix_arrays
from stl10_similarity.index.projection import Projection, fit_projection
from stl10_similarity.index.sets import SetRepresentation, TopDims, bitmaps, representation
from stl10_similarity.index.signatures import SEED, minhash_signatures, set_statistics, token_table, top_k_sets
from stl10_similarity.index.state import (
    ARTIFACTS,
    MAKE_CMD,
    SHARED,
    _inputs,
    feature_ids,
    index_params,
    params_of,
    shard_count,
    vocabulary_record,
)
from stl10_similarity.params import COMPILED_TOP_K_ROWS, IndexParams
from stl10_similarity.sources import keys_are_paths
from stl10_similarity.store import Manifest
from stl10_similarity.store.artifacts import (
    load_npy,
    verified_path,
)
from stl10_similarity.store.paths import features_dir, index_dir


def frozen_representation(params: IndexParams, vocabulary: np.ndarray, dim: int) -> SetRepresentation:
    """The representation an index was built with, for its frozen ``vocabulary``."""
    return representation(params if params.sets != "centroids" or params.centroids else
                          replace(params, centroids=len(vocabulary)), 0, dim)


class _Rows(abc.ABC):
    """Image ids and rows, for anything with ``n`` and ``ids`` (None: an image's id is its row)."""

    ids: np.ndarray | None

    @property
    @abc.abstractmethod
    def n(self) -> int:
        """How many rows (images) it holds: each kind of index counts its own."""

    def id_of(self, row: int) -> int:
        return int(row) if self.ids is None else int(self.ids[row])

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows, dtype=np.int64) if self.ids is None else self.ids[np.asarray(rows, dtype=np.intp)]

    def _lookup(self, image_ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """The rows that would hold ``image_ids``, and which of those ids the collection really holds."""
        wanted = np.asarray(image_ids, dtype=np.int64).reshape(-1)
        if self.ids is None:
            return wanted, (wanted >= 0) & (wanted < self.n)
        rows = np.searchsorted(self.ids, wanted)  # ids are stored in increasing order
        found = rows < self.n
        found[found] = self.ids[rows[found]] == wanted[found]
        return rows, found

    def row_of(self, image_id: int) -> int | None:
        """The row holding image ``image_id``, or None when the collection has no such image."""
        if not 0 <= image_id < 2**63:  # ids are non-negative int64: anything else is in no collection
            return None
        rows, found = self._lookup(image_id)
        return int(rows[0]) if found[0] else None

    def rows_of(self, image_ids: np.ndarray) -> np.ndarray:
        """The rows holding ``image_ids`` (all of them must be in the collection)."""
        rows, found = self._lookup(image_ids)
        if not found.all():
            raise ValueError("not every id is in the collection")
        return rows.astype(np.int64)


@dataclass
class LoadedIndex(_Rows):
    """Everything a query needs, verified against the manifests and memory-mapped.

    ``forest`` (the datasketch object) is loaded on first use only; the other methods read the
    trees from ``tree_keys`` / ``tree_order``.
    """

    params: dict[str, Any]
    features_params: dict[str, Any]
    class_names: list[str]
    features: np.ndarray
    labels: np.ndarray
    topk: np.ndarray  # each image's top-K dimensions: the set statistics every result shows
    topk_bits: np.ndarray  # the same sets as bitmaps, for counting shared dimensions over thousands of candidates
    sets: np.ndarray  # each image's tokens, the sets the forest indexes (sets.py)
    vocabulary: np.ndarray  # the frozen state the sets came from (centroids, or empty)
    signatures: np.ndarray
    stats: np.ndarray
    token_table: np.ndarray  # each token's hash under each permutation, padding row last (token_table.npy)
    tree_keys: np.ndarray
    tree_order: np.ndarray
    projection: np.ndarray  # the projection.npy artifact (projection.py): directions, scales, variance share
    projected: np.ndarray  # each image's int8 coordinates along them, for choosing whom to give an exact cosine
    forest_loader: Callable[[], Any] | None = None
    _forest: Any = None
    paths: np.ndarray | None = None  # each image's path, for folder collections
    ids: np.ndarray | None = None  # each row's image id when they differ (folder collections after removals)
    set_representation: SetRepresentation | None = None  # one of the caller's own (index_in_memory's ``rep``)

    @property
    def n(self) -> int:
        return len(self.signatures)

    @property
    def universe(self) -> int:
        """How many tokens the sets can hold (the token table's last row is the padding token)."""
        return len(self.token_table) - 1

    def representation(self) -> SetRepresentation:
        """How a new image's set is formed: the representation the index was built with, frozen."""
        if self.set_representation is not None:
            return self.set_representation
        return frozen_representation(params_of(self.params), np.asarray(self.vocabulary), self.features.shape[1])

    @property
    def forest(self) -> Any:
        if self._forest is None and self.forest_loader is not None:
            self._forest = self.forest_loader()
        return self._forest


def index_in_memory(
    features: np.ndarray, labels: np.ndarray, class_names: list[str], params: IndexParams = IndexParams(),
    stats: np.ndarray | None = None, vocabulary: np.ndarray | None = None, rep: SetRepresentation | None = None,
    projection: Projection | None = None,
) -> LoadedIndex:
    """Build an index without touching disk (for sweeps, benchmarks and tests); ``stats``, ``vocabulary`` and
    ``projection``: the set statistics, vocabulary and projection to use instead of fitting them on these
    features; ``rep``: a set representation of your own instead of the one ``params`` name."""
    trees = params.trees
    stats = set_statistics(features) if stats is None else stats
    topk = top_k_sets(features, params.top_k, params.basis, stats, compiled=len(features) >= COMPILED_TOP_K_ROWS)
    if rep is None:
        rep = representation(params, len(features), features.shape[1]) if vocabulary is None else \
            frozen_representation(params, vocabulary, features.shape[1])
    if vocabulary is None:
        vocabulary = rep.fit(features, stats, SEED)
    sets = topk if isinstance(rep, TopDims) else rep.sets(features, stats, vocabulary)
    table = token_table(params.num_perm, rep.universe(vocabulary))
    sigs = minhash_signatures(sets, table)
    tree_keys, tree_order = prefix_arrays(sigs, trees, BandCodes.for_table(table, trees))
    projection = fit_projection(features, stats[0], SEED) if projection is None else projection
    recorded = {**index_params(params), "vocabulary": vocabulary_record(rep, vocabulary, len(features))}
    return LoadedIndex(params=recorded, features_params={}, class_names=class_names,
                       features=features, labels=labels, topk=topk, topk_bits=bitmaps(topk, features.shape[1]),
                       sets=sets, vocabulary=vocabulary,
                       signatures=sigs, stats=stats, token_table=table, tree_keys=tree_keys, tree_order=tree_order,
                       projection=projection.to_array(), projected=projection.encode(features),
                       forest_loader=lambda: build_forest(sigs, trees),  # only forest-query needs the object
                       set_representation=rep)


def load_index(home: Path, *, mapped: bool = True) -> LoadedIndex | ShardedIndex:
    """Load and verify the index and the features it was built from (a sharded index: every shard); memory-mapped,
    or (``mapped=False``) read into memory, where no other process can truncate pages under a reader.

    Raises:
        MissingArtifactError: a stage has not run yet.
        StaleArtifactError: the features changed since the index was built.
        IntegrityError: an artifact does not match its manifest.
    """
    opened = _open(home, mapped)
    manifest = opened.manifest
    if not manifest.get("shards"):
        return _load_one(index_dir(home), manifest, opened, 0, opened.n, mapped)
    shards = [load_shard(home, s, opened, mapped=mapped) for s in range(shard_count(manifest))]
    first = shards[0]
    return ShardedIndex(params=first.params, features_params=opened.features_manifest["params"],
                        class_names=opened.class_names, features=opened.features, labels=opened.labels,
                        shards=shards, paths=opened.paths, ids=None if opened.plain_ids else opened.ids)


def load_shard(home: Path, number: int, opened: _Opened | None = None, *, mapped: bool = True) -> LoadedIndex:
    """Shard ``number`` of a sharded index, verified, over its rows of the collection's features (a Ray actor
    serving one shard opens only that one)."""
    opened = opened or _open(home, mapped)
    if not opened.manifest.get("shards"):  # an ordinary index is one shard
        if number != 0:
            raise ParameterError("shard", f"{number}: the index is not sharded")
        return _load_one(index_dir(home), opened.manifest, opened, 0, opened.n, mapped)
    entry = opened.manifest.shards[number]
    return _load_one(index_dir(home) / entry.folder, store.shard_manifest(home, entry), opened,
                     entry.lo, entry.hi, mapped)


@dataclass
class _Opened:
    """The features side of an index, verified and memory-mapped, with the index's own manifest."""

    manifest: Manifest
    features_manifest: Manifest
    features: np.ndarray
    labels: np.ndarray
    paths: np.ndarray | None
    ids: np.ndarray
    class_names: list[str]

    @property
    def n(self) -> int:
        return len(self.features)

    @property
    def plain_ids(self) -> bool:
        return bool(np.array_equal(self.ids, np.arange(len(self.ids))))


def _open(home: Path, mapped: bool = True) -> _Opened:
    source = features_dir(home)
    features_manifest = store.features_manifest(home)
    manifest = store.index_manifest(home)
    if manifest.get("inputs") != _inputs(home):
        raise StaleArtifactError("the index was built from other features than the ones extracted now: run `stl10sim index`")
    expected = SHARED if manifest.get("shards") else ARTIFACTS
    if set(manifest.get("artifacts", ())) != expected or "vocabulary" not in manifest:
        raise StaleArtifactError("the index was built by an older version of stl10sim: run `stl10sim index`")
    fmake = store.EXTRACT_CMD
    # plain ndarray views of the memory maps: same pages, but slicing them costs no np.memmap bookkeeping
    # (a third of a query's time at 13,000 images went to memmap.__getitem__)
    feats = np.asarray(load_npy(source, features_manifest, "features", make_cmd=fmake, mmap=mapped))
    labels = np.asarray(load_npy(source, features_manifest, "labels", make_cmd=fmake, mmap=mapped))
    paths = None
    if keys_are_paths(features_manifest.source):  # results carry them
        paths = np.asarray(load_npy(source, features_manifest, "keys", make_cmd=fmake, mmap=mapped))
    ids = feature_ids(source, features_manifest, len(feats))
    return _Opened(manifest, features_manifest, feats, labels, paths, ids,
                   list(features_manifest.get("class_names", [])))


def _load_one(folder: Path, manifest: dict[str, Any], opened: _Opened, lo: int, hi: int,
              mapped: bool = True) -> LoadedIndex:
    """An ordinary index in ``folder`` over rows ``lo:hi`` of the opened features."""

    def artifact(name: str) -> np.ndarray:
        return np.asarray(load_npy(folder, manifest, name, make_cmd=MAKE_CMD, mmap=mapped))

    index = LoadedIndex(
        params={**manifest["params"], "vocabulary": opened.manifest["vocabulary"]},
        features_params=opened.features_manifest["params"],
        class_names=opened.class_names, features=opened.features[lo:hi], labels=opened.labels[lo:hi],
        topk=artifact("topk"), topk_bits=artifact("topk_bits"), sets=artifact("sets"),
        vocabulary=artifact("vocabulary"),
        signatures=artifact("signatures"), stats=artifact("stats"),
        token_table=artifact("token_table"), tree_keys=artifact("tree_keys"), tree_order=artifact("tree_order"),
        projection=artifact("projection"), projected=artifact("projected"),
    )
    if opened.paths is not None:
        index.paths = opened.paths[lo:hi]
    ids = opened.ids[lo:hi]
    if not np.array_equal(ids, np.arange(len(ids))):
        index.ids = ids
    if "ids" in manifest["artifacts"] and not np.array_equal(artifact("ids"), ids):
        raise IntegrityError("features and index disagree on the images' ids: run `stl10sim index --force`")
    if not (hi - lo == len(index.labels) == len(index.topk) == len(index.sets) == index.n
            == index.tree_order.shape[1] == len(index.projected)):
        raise IntegrityError("features and index disagree on the number of images: run `stl10sim index --force`")
    if "forest" not in manifest["artifacts"]:
        raise StaleArtifactError("the index lists no forest: run `stl10sim index --force`")

    def load_forest() -> Any:  # only forest-query needs it: read (and hashed, every time, stamp or not) then
        forest_path = verified_path(folder, manifest, "forest", make_cmd=MAKE_CMD, trust_stamp=False)
        with open(forest_path, "rb") as handle:
            return pickle.load(handle)

    index.forest_loader = load_forest
    return index


@dataclass
class ShardedIndex(_Rows):
    """A collection indexed as shards: the collection-wide arrays (features, labels, paths, ids) and the shards,
    each a :class:`LoadedIndex` over its contiguous rows, that a ``Searcher`` fans out to."""

    params: dict[str, Any]
    features_params: dict[str, Any]
    class_names: list[str]
    features: np.ndarray
    labels: np.ndarray
    shards: list[LoadedIndex]
    paths: np.ndarray | None = None
    ids: np.ndarray | None = None
    _topk: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.features)

    @property
    def topk(self) -> np.ndarray:
        """Every image's top-K dimensions (gathered from the shards on first use: evaluate and duplicates)."""
        if self._topk is None:
            self._topk = np.concatenate([np.asarray(shard.topk) for shard in self.shards])
        return self._topk

    @property
    def universe(self) -> int:
        return self.shards[0].universe

