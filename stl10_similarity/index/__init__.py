"""Stage 3: top-K sets, MinHash signatures and a datasketch MinHashLSHForest over them.

The forest is pickled (datasketch has no other format); it is only ever unpickled after its
SHA-256 matches the manifest this stage wrote, and only for ``--method forest-query``: the other
methods search the same trees through memory-mapped arrays (``tree_keys``/``tree_order``).
"""

from __future__ import annotations

import abc
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity import store
from stl10_similarity.errors import InputError, IntegrityError, MissingArtifactError, ParameterError, StaleArtifactError
from stl10_similarity.index.forest import BandCodes, ForestPickle, build_forest, merge_prefix_arrays, prefix_arrays
from stl10_similarity.index.projection import Projection, fit_projection
from stl10_similarity.index.sets import SetRepresentation, TopDims, bitmaps, representation
from stl10_similarity.index.signatures import SCHEME, SEED, minhash_signatures, set_statistics, token_table, top_k_sets
from stl10_similarity.ingest import extract as features_stage
from stl10_similarity.params import PROJECTION_DIMS, EngineParams, IndexParams, ShardParams
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.sources import keys_are_paths
from stl10_similarity.store import Manifest
from stl10_similarity.store.artifacts import (
    atomic_file,
    cache_lock,
    commit_staged,
    iter_npy_rows,
    library_versions,
    load_npy,
    staging_dir,
    verified_path,
    write_npy,
)
from stl10_similarity.store.paths import features_dir, index_dir

MAKE_CMD = store.INDEX_CMD
CHUNK_ROWS = 65536
ARTIFACTS = {"topk", "topk_bits", "sets", "vocabulary", "signatures", "stats", "token_table", "tree_keys",
             "tree_order", "projection", "projected", "forest", "ids"}
SHARED = {"vocabulary", "stats", "token_table"}  # a sharded index's own artifacts; each shard holds ARTIFACTS
# an index whose vocabulary was fitted on this many times fewer images than the collection now holds says so
OUTGROWN_FACTOR = 4


def index_params(params: IndexParams) -> dict[str, Any]:
    """What decides the index's content: recorded in its manifest and in every query's params."""
    return {**asdict(params), "scheme": SCHEME, "seed": SEED, "token": "str(token).encode()"}


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
    wanted = index_params(params) if params is not None else dict(manifest.get("params") or {})
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


def ensure_index(home: Path, *, progress: Progress = SILENT) -> IndexResult | None:
    """Build the index first when it is missing (default parameters) or stale (the parameters it was last
    built with), saying so in one note; ``None`` when it is current."""
    state = index_state(home)
    if state in ("current", "corrupt"):
        return None  # a corrupt manifest is reported by load_index, naming the command that fixes it
    store.features_manifest(home)  # no features: say `stl10sim extract`, not "building the index"
    params, shards = last_params(home), last_shards(home)
    what = "no index yet: building it" if state == "missing" else "the index is out of date: bringing it up to date"
    progress.note(f"{what} ({describe_params(params)}{f', {shards} shards' if shards > 1 else ''}) ...")
    return build_index(home, params, shards=shards, progress=_WaitsOnly(progress))


def describe_params(params: IndexParams) -> str:
    """The index parameters in one phrase, for notes."""
    sets = f"{params.set_size} nearest of {params.centroids or 'auto'} centroids" if params.sets == "centroids" \
        else f"top {params.top_k} {params.basis} dims"
    return f"sets: {sets}, num_perm {params.num_perm}, trees {params.trees}"


class _WaitsOnly:
    """Passes on "waiting for the lock" notes but not the build's steps: one line says the index is being built."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def note(self, message: str) -> None:
        if message.startswith("waiting"):
            self._progress.note(message)

    def bar(self, total: int, desc: str, unit: str = "it", initial: int = 0) -> Any:
        return SILENT.bar(total, desc, unit, initial)


def build_index(
    home: Path,
    params: IndexParams = IndexParams(),
    *,
    force: bool = False,
    wait: bool = True,
    progress: Progress = SILENT,
    shards: int = ShardParams.shards,
    engine: EngineParams = EngineParams(),
) -> IndexResult:
    """Build (or reuse) the index for the features in ``home``; ``shards`` > 1 builds that many shards
    (contiguous rows, each an ordinary index, all with one vocabulary), on Ray when ``engine`` says so."""
    ShardParams(shards=shards)  # validates
    started = time.time()
    trees = params.trees
    source = features_dir(home)
    folder = index_dir(home)
    with cache_lock(home, wait=wait, progress=progress):
        features_manifest = store.features_manifest(home)
        inputs = _inputs(home)
        recorded = index_params(params)
        if not force and (manifest := _cached(home, recorded, inputs, shards)) is not None:
            return IndexResult(folder, manifest["n"], time.time() - started, True, manifest)
        feats = load_npy(source, features_manifest, "features", make_cmd=features_stage.MAKE_CMD)  # verified
        path, dim = source / "features.npy", feats.shape[1]
        ids = feature_ids(source, features_manifest, len(feats))
        if shards > 1:
            sharded = _build_sharded(home, feats, path, ids, params, shards, engine, inputs,
                                     features_manifest, started, progress)
            return IndexResult(folder, len(ids), time.time() - started, False, sharded)
        staging = staging_dir(folder)
        base = None if force else _base_for_update(home, recorded, features_manifest)
        step = lambda what: progress.note(f"index: {what} ...")  # noqa: E731
        if base is not None:
            step(f"updating in place the index built at update {base.generation}")
            fitted_on = int(base.manifest["vocabulary"]["fitted_on"])
            if len(ids) > OUTGROWN_FACTOR * fitted_on:
                progress.note(f"the collection has {len(ids)} images, over {OUTGROWN_FACTOR}x the {fitted_on} its "
                              f"set vocabulary was fitted on: `stl10sim index --force` fits it again")
            versions = load_npy(source, features_manifest, "versions", make_cmd=features_stage.MAKE_CMD, mmap=False)
            sigs = _update(base, feats, ids, np.asarray(versions), params, staging)
            vocab = base.manifest["vocabulary"]
        else:
            sigs, vocab = _build(feats, path, dim, params, staging, step)
        write_npy(staging / "ids.npy", ids)
        del feats
        with atomic_file(staging / "forest.pkl") as handle:
            pickle.dump(ForestPickle(sigs, trees), handle, protocol=pickle.HIGHEST_PROTOCOL)
        artifacts = commit_staged(folder, staging)
        manifest = store.write_index_manifest(
            home, params=recorded, artifacts=artifacts, inputs=inputs, n=len(sigs),
            started=started, versions=library_versions(),
            extra={"collection": features_manifest.get("collection"), "updated": base is not None,
                   "vocabulary": vocab},
        )
        store.remove_unlisted(folder, manifest)
        return IndexResult(folder, len(sigs), time.time() - started, False, manifest)


def _build_sharded(home: Path, feats: np.ndarray, path: Path, ids: np.ndarray, params: IndexParams, shards: int,
                   engine: EngineParams, inputs: dict[str, str], features_manifest: dict[str, Any], started: float,
                   progress: Progress) -> dict[str, Any]:
    """Fit the statistics and vocabulary once on every image, then build each shard over its rows with them
    (here, or one Ray task per shard); the index's manifest, written last, lists the shards by digest."""
    n, dim = feats.shape
    if shards > n:
        raise ParameterError("shards", f"({shards}) is more than the collection's {n} images")
    progress.note("index: per-dimension statistics ...")
    stats = set_statistics(iter_npy_rows(path, CHUNK_ROWS // 4))
    rep = representation(params, n, dim)
    progress.note(f"index: fitting the {rep.name} vocabulary ...")
    vocabulary = rep.fit(feats, stats, SEED)
    progress.note("index: projection ...")
    projection = fit_projection(feats, stats[0], SEED).to_array()
    bounds = [s * n // shards for s in range(shards + 1)]
    store.retire_index_manifest(home)  # not an index until every shard, then its manifest, is in
    jobs = [(str(path), bounds[s], bounds[s + 1], ids[bounds[s] : bounds[s + 1]], stats, vocabulary, projection,
             asdict(params), str(home), f"shard_{s:03d}", inputs) for s in range(shards)]
    if engine.engine == "ray":
        from stl10_similarity.index.ray_shards import build_shards

        listed = build_shards(build_shard, jobs, engine.address, progress)
    else:
        bar = progress.bar(shards, "index shards", unit="shard")
        listed = []
        for job in jobs:
            listed.append(build_shard(*job))
            bar.update(1)
        bar.close()
    folder = index_dir(home)
    staging = staging_dir(folder)
    write_npy(staging / "vocabulary.npy", vocabulary)
    write_npy(staging / "stats.npy", stats)
    write_npy(staging / "token_table.npy", token_table(params.num_perm, rep.universe(vocabulary)))
    artifacts = commit_staged(folder, staging)
    manifest = store.write_index_manifest(
        home, params=index_params(params), artifacts=artifacts, inputs=inputs, n=n,
        started=started, versions=library_versions(),
        extra={"collection": features_manifest.get("collection"), "updated": False,
               "vocabulary": vocabulary_record(rep, vocabulary, n), "shards": listed},
    )
    store.remove_unlisted(folder, manifest)
    return manifest


def build_shard(features_path: str, lo: int, hi: int, ids: np.ndarray, stats: np.ndarray, vocabulary: np.ndarray,
                projection: np.ndarray, params: dict[str, Any], home: str, shard: str,
                inputs: dict[str, str]) -> dict[str, Any]:
    """One shard: an ordinary index over feature rows ``lo:hi`` with the collection's frozen statistics,
    vocabulary and projection (every shard's scores must compare), committed in ``folder``. Runs in this process
    or as a Ray task (the features file is read where it is, already verified by the caller), in ``index/shard``
    of the collection's ``home``; returns the entry the index's manifest lists it by."""
    started = time.time()
    index_params_ = IndexParams(**params)
    shard_features = np.asarray(np.load(features_path, mmap_mode="r")[lo:hi], dtype=np.float32)
    built = index_in_memory(shard_features, np.zeros(hi - lo, np.int16), [], index_params_, stats=stats,
                            vocabulary=vocabulary, projection=Projection.from_array(projection))
    target = index_dir(Path(home)) / shard
    target.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target)
    for name in ("topk", "topk_bits", "sets", "vocabulary", "signatures", "stats", "tree_keys", "tree_order",
                 "projection", "projected"):
        write_npy(staging / f"{name}.npy", np.asarray(getattr(built, name)))
    write_npy(staging / "token_table.npy", built.token_table)
    write_npy(staging / "ids.npy", np.asarray(ids, dtype=np.int64))
    with atomic_file(staging / "forest.pkl") as handle:
        pickle.dump(ForestPickle(built.signatures, index_params_.trees), handle, protocol=pickle.HIGHEST_PROTOCOL)
    artifacts = commit_staged(target, staging)
    store.write_index_manifest(Path(home), shard, params=index_params(index_params_), artifacts=artifacts,
                               inputs={**inputs, "rows": f"{lo}:{hi}"}, n=hi - lo, started=started,
                               versions=library_versions(), extra={"vocabulary": built.params["vocabulary"]})
    return store.shard_entry(Path(home), shard, lo, hi).record()


def feature_ids(folder: Path, manifest: dict[str, Any], n: int) -> np.ndarray:
    """Each feature row's image id (a folder collection's ids have gaps where images were removed)."""
    if "ids" not in manifest.get("artifacts", {}):
        return np.arange(n, dtype=np.int64)
    return np.asarray(load_npy(folder, manifest, "ids", make_cmd=features_stage.MAKE_CMD, mmap=False))


def _build(feats: np.ndarray, path: Path, dim: int, params: IndexParams, staging: Path,
           step: Callable[[str], None]) -> tuple[np.ndarray, dict[str, Any]]:
    """Everything from scratch; streaming passes over the features keep memory at one chunk (plus the sample
    the vocabulary is fitted on), whatever N is."""
    n = len(feats)
    step("per-dimension statistics")
    stats = set_statistics(iter_npy_rows(path, CHUNK_ROWS // 4))
    step(f"top-{params.top_k} sets")
    topk = np.concatenate([top_k_sets(block, params.top_k, params.basis, stats)
                           for block in iter_npy_rows(path, CHUNK_ROWS)])
    write_npy(staging / "topk.npy", topk)
    write_npy(staging / "topk_bits.npy", bitmaps(topk, dim))
    rep = representation(params, n, dim)
    step(f"fitting the {rep.name} vocabulary")
    vocabulary = rep.fit(feats, stats, SEED)
    step("sets")
    sets = topk if isinstance(rep, TopDims) else \
        np.concatenate([rep.sets(block, stats, vocabulary) for block in iter_npy_rows(path, CHUNK_ROWS)])
    del topk
    step("MinHash signatures")
    table = token_table(params.num_perm, rep.universe(vocabulary))
    sigs = minhash_signatures(sets, table)
    write_npy(staging / "sets.npy", sets)
    write_npy(staging / "vocabulary.npy", vocabulary)
    write_npy(staging / "signatures.npy", sigs)
    write_npy(staging / "stats.npy", stats)
    del sets
    step(f"projection ({PROJECTION_DIMS} directions)")
    projection = fit_projection(feats, stats[0], SEED)
    write_npy(staging / "projection.npy", projection.to_array())
    write_npy(staging / "projected.npy", projection.encode(feats))  # the forest is the big one: nothing else held
    write_npy(staging / "token_table.npy", table)
    step(f"LSH forest ({params.trees} trees)")
    tree_keys, tree_order = prefix_arrays(sigs, params.trees, BandCodes.for_table(table, params.trees))
    write_npy(staging / "tree_keys.npy", tree_keys)
    write_npy(staging / "tree_order.npy", tree_order)
    return sigs, vocabulary_record(rep, vocabulary, n)


@dataclass(frozen=True)
class _Base:
    """An index of an earlier version of the same folder collection, verified, that an update can start from."""

    manifest: Manifest
    arrays: dict[str, np.ndarray]

    @property
    def generation(self) -> int:
        """The collection's update count when this index was built: rows written later are recomputed."""
        return self.manifest.lineage.generation  # type: ignore[union-attr]


def _base_for_update(home: Path, params: dict[str, Any], features_manifest: Manifest) -> _Base | None:
    """The current index, when it was built with ``params`` from an earlier version of these features."""
    now = features_manifest.lineage
    if now is None or "versions" not in features_manifest.get("artifacts", {}):
        return None  # only folder collections record which rows each update wrote
    folder = index_dir(home)
    try:
        manifest = store.index_manifest(home)
        built = manifest.lineage
        if manifest.shards or manifest.get("params") != params or set(manifest.get("artifacts", ())) != ARTIFACTS \
                or built is None or built.lineage != now.lineage or built.generation > now.generation:
            return None
        names = ("topk", "topk_bits", "sets", "vocabulary", "signatures", "stats", "token_table", "tree_keys",
                 "tree_order", "projection", "projected", "ids")
        arrays = {name: np.asarray(load_npy(folder, manifest, name, make_cmd=MAKE_CMD)) for name in names}
    except (MissingArtifactError, IntegrityError, KeyError, TypeError, ValueError):
        return None
    return _Base(manifest, arrays)


def _update(base: _Base, feats: np.ndarray, ids: np.ndarray, versions: np.ndarray, params: IndexParams,
            staging: Path) -> np.ndarray:
    """The index of the updated collection from ``base``: rows the updates since wrote get new sets and
    signatures (with the statistics and vocabulary ``base`` froze), removed rows leave the trees, and the new
    rows' bands are merged into the sorted trees. The result equals a build from scratch with that frozen
    statistics and vocabulary."""
    old = base.arrays
    old_ids = old["ids"]
    at = np.minimum(np.searchsorted(ids, old_ids), len(ids) - 1)  # both ascending: where each old id is now
    present = ids[at] == old_ids
    fresh = versions > base.generation  # rows written (new or changed) since the base was built
    row_map = np.where(present & ~fresh[at], at, -1)  # old row -> new row, or -1 (removed or rewritten)
    fresh_rows = np.flatnonzero(fresh | ~np.isin(ids, old_ids))
    kept_old = np.flatnonzero(row_map >= 0)
    stats, table, vocabulary = np.asarray(old["stats"]), np.asarray(old["token_table"]), np.asarray(old["vocabulary"])
    rep = frozen_representation(params, vocabulary, feats.shape[1])
    out = {}
    projection = Projection.from_array(old["projection"])  # frozen, as the statistics are
    per_row = ("topk", "topk_bits", "sets", "signatures", "projected")
    for name in per_row:
        out[name] = np.empty((len(ids), old[name].shape[1]), dtype=old[name].dtype)
        out[name][row_map[kept_old]] = old[name][kept_old]
    if len(fresh_rows):
        new_feats = np.asarray(feats[fresh_rows])
        out["topk"][fresh_rows] = top_k_sets(new_feats, params.top_k, params.basis, stats)
        out["topk_bits"][fresh_rows] = bitmaps(out["topk"][fresh_rows], feats.shape[1])
        out["sets"][fresh_rows] = rep.sets(new_feats, stats, vocabulary)
        out["signatures"][fresh_rows] = minhash_signatures(out["sets"][fresh_rows], table)
        out["projected"][fresh_rows] = projection.encode(new_feats)
    sigs = out["signatures"]
    # an index built before band codes keeps its byte strings until it is rebuilt: the trees stay in one form
    codes = BandCodes(table, params.trees) if old["tree_keys"].dtype == np.uint64 else None
    tree_keys, tree_order = merge_prefix_arrays(old["tree_keys"], old["tree_order"], row_map, sigs, fresh_rows,
                                                params.trees, codes)
    for name in per_row:
        write_npy(staging / f"{name}.npy", out[name])
    write_npy(staging / "vocabulary.npy", vocabulary)
    write_npy(staging / "stats.npy", stats)
    write_npy(staging / "token_table.npy", table)
    write_npy(staging / "projection.npy", old["projection"])
    write_npy(staging / "tree_keys.npy", tree_keys)
    write_npy(staging / "tree_order.npy", tree_order)
    return sigs


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
    topk = top_k_sets(features, params.top_k, params.basis, stats)
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
    fmake = features_stage.MAKE_CMD
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
