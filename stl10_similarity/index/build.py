"""Building the index: fit the vocabulary, sets, signatures and trees over the collection's features, in one
piece, as shards (in-process or Ray tasks), or updated in place after a folder update (frozen vocabulary); and
``ensure_index``, which builds a missing or stale one with the parameters it was last built with."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity import store
from stl10_similarity.errors import IntegrityError, MissingArtifactError, ParameterError
from stl10_similarity.index.forest import BandCodes, ForestPickle, merge_prefix_arrays, prefix_arrays
from stl10_similarity.index.loaded import frozen_representation, index_in_memory
from stl10_similarity.index.projection import Projection, fit_projection
from stl10_similarity.index.sets import TopDims, bitmaps, representation
from stl10_similarity.index.signatures import SEED, minhash_signatures, set_statistics, token_table, top_k_sets
from stl10_similarity.index.state import (
    ARTIFACTS,
    CHUNK_ROWS,
    MAKE_CMD,
    OUTGROWN_FACTOR,
    IndexResult,
    _cached,
    _inputs,
    describe_params,
    feature_ids,
    index_params,
    index_state,
    last_params,
    last_shards,
    vocabulary_record,
)
from stl10_similarity.params import COMPILED_TOP_K_ROWS, PROJECTION_DIMS, EngineParams, IndexParams, ShardParams
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.store import Manifest
from stl10_similarity.store.artifacts import (
    atomic_file,
    cache_lock,
    commit_staged,
    iter_npy_rows,
    library_versions,
    load_npy,
    staging_dir,
    write_npy,
)
from stl10_similarity.store.paths import features_dir, index_dir


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
        feats = load_npy(source, features_manifest, "features", make_cmd=store.EXTRACT_CMD)  # verified
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
            versions = load_npy(source, features_manifest, "versions", make_cmd=store.EXTRACT_CMD, mmap=False)
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


def _build(feats: np.ndarray, path: Path, dim: int, params: IndexParams, staging: Path,
           step: Callable[[str], None]) -> tuple[np.ndarray, dict[str, Any]]:
    """Everything from scratch; streaming passes over the features keep memory at one chunk (plus the sample
    the vocabulary is fitted on), whatever N is."""
    n = len(feats)
    step("per-dimension statistics")
    stats = set_statistics(iter_npy_rows(path, CHUNK_ROWS // 4))
    step(f"top-{params.top_k} sets")
    topk = np.concatenate([top_k_sets(block, params.top_k, params.basis, stats, compiled=n >= COMPILED_TOP_K_ROWS)
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
        out["topk"][fresh_rows] = top_k_sets(new_feats, params.top_k, params.basis, stats,
                                             compiled=len(fresh_rows) >= COMPILED_TOP_K_ROWS)
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


