"""Folder collections kept up to date: embed only the files that are new or changed, keep every image's id.

A folder collection remembers, per image, its path, size, modification time and SHA-256. Rerunning
``extract`` scans the folder again: a file whose size and mtime are unchanged is unchanged; one whose size
or mtime changed is hashed, and it is *changed* only when its content is. Changed files are embedded again
and keep their id; new files get the next ids (never one a removed image had); removed files leave.
Features are stored in id order, so ``ids.npy`` maps each row to its id.

Every row also records the *generation* (the update) that last wrote its features; the index reads that to
redo only the rows written since it was built (index.py). The embedding itself is extract's resumable
chunking: a killed update, run again over the same folder, plans the same work and resumes it.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity import store
from stl10_similarity.errors import DataError, InputError, IntegrityError, MissingArtifactError, Stl10SimError
from stl10_similarity.ingest.extract import MAKE_CMD, ExtractResult, commit_features, identity_params, run_params
from stl10_similarity.ingest.model import resize_side
from stl10_similarity.ingest.runners import EmbedJob, LocalRunner, Runner
from stl10_similarity.params import ExtractParams
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.sources import StampedSource, folder_root
from stl10_similarity.sources.folders import FolderSource
from stl10_similarity.store.artifacts import cache_lock, load_npy
from stl10_similarity.store.paths import features_dir

UPDATE_ARTIFACTS = ("stamps", "digests", "versions")  # what a collection needs beyond extract's artifacts


@dataclass(frozen=True)
class Plan:
    """What an update does, decided from the folder and the collection's records before any embedding."""

    embed: list[str]  # paths to embed: the changed ones (in id order), then the new ones (sorted)
    changed: np.ndarray  # rows (of the previous features) whose file's content changed
    removed: np.ndarray  # rows whose file is gone
    stamps: dict[str, tuple[int, int]]  # (size, mtime_ns) of every file found
    digests: dict[str, bytes]  # SHA-256 of the files whose size or mtime moved (changed, or touched but the same)
    still_skipped: list[dict[str, Any]]  # files unreadable before and not touched since: not tried again
    unchanged: int
    unnamable: list[dict[str, Any]]  # files that could not be keys (bad names, FIFOs, symlinks out): left out, warned

    @property
    def new(self) -> list[str]:
        return self.embed[len(self.changed):]


@dataclass(frozen=True)
class Previous:
    """The collection as its last extraction left it."""

    manifest: store.Manifest
    keys: list[str]
    ids: np.ndarray
    stamps: np.ndarray  # (n, 2) int64: size, mtime_ns
    digests: np.ndarray  # (n,) S32
    versions: np.ndarray  # (n,) int64


def load_previous(home: Path, identity: dict[str, Any]) -> Previous | None:
    """The collection's last extraction if it can be built on (same folder and model, verified files)."""
    folder = features_dir(home)
    try:
        manifest = store.features_manifest(home)
    except (MissingArtifactError, IntegrityError):
        return None
    params = manifest.get("params", {})
    if {k: params.get(k) for k in identity} != identity \
            or not all(name in manifest["artifacts"] for name in UPDATE_ARTIFACTS):
        return None

    def load(name: str) -> np.ndarray:
        return np.asarray(load_npy(folder, manifest, name, make_cmd=MAKE_CMD, mmap=False))

    try:
        return Previous(manifest, [str(k) for k in load("keys")], load("ids"), load("stamps"), load("digests"),
                        load("versions"))
    except IntegrityError:
        return None  # damaged: start the collection over rather than build on it


def plan_update(source: StampedSource, previous: Previous | None, threads: int = 8,
                progress: Progress = SILENT) -> Plan:
    """Compare the source as it is now with the previous extraction: by key and stamp, and by content (the
    item's digest) where the stamp moved. For a folder: by path, size and mtime; by SHA-256 when those moved."""
    stamps: dict[str, tuple[int, int]] = {}
    for key in source.keys():
        try:
            stamps[key] = source.stamp(key)
        except OSError:
            continue  # vanished while scanning: as if it were not there
    old_rows = {key: row for row, key in enumerate(previous.keys)} if previous else {}
    skipped_before = {e["path"]: e for e in previous.manifest.get("skipped", [])} if previous else {}
    suspects, new, still_skipped = [], [], []
    for key, stamp in stamps.items():
        row = old_rows.get(key)
        if row is not None:
            if tuple(previous.stamps[row]) != stamp:  # type: ignore[union-attr]
                suspects.append(key)
        elif key in skipped_before and (skipped_before[key].get("size"), skipped_before[key].get("mtime_ns")) == stamp:
            still_skipped.append(skipped_before[key])
        else:
            new.append(key)
    digests: dict[str, bytes] = {}

    def hashed(key: str) -> tuple[str, bytes | None]:
        try:
            return key, source.digest(key)
        except OSError:
            return key, None  # unreadable now: embedding will say why and skip it

    bar = progress.bar(len(suspects), "hash moved files", unit="file") if suspects else None
    with ThreadPoolExecutor(threads) as pool:  # new files are hashed as they are decoded (one read each)
        for key, digest in pool.map(hashed, suspects):
            if digest is not None:
                digests[key] = digest
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    changed = sorted(old_rows[k] for k in suspects if digests.get(k) != bytes(previous.digests[old_rows[k]]))  # type: ignore[union-attr]
    removed = sorted(row for key, row in old_rows.items() if key not in stamps)
    unchanged = len(old_rows) - len(changed) - len(removed)
    embed = [previous.keys[row] for row in changed] + sorted(new) if previous else sorted(new)
    return Plan(embed, np.array(changed, dtype=np.int64), np.array(removed, dtype=np.int64), stamps, digests,
                still_skipped, unchanged,
                list(source.unnamable))


def update_folder(
    root: Path,
    home: Path,
    params: ExtractParams = ExtractParams(),
    *,
    force: bool = False,
    wait: bool = True,
    progress: Progress = SILENT,
    pipelined: bool | None = None,
    runner: Runner | None = None,
) -> ExtractResult:
    """Create or bring up to date the folder collection whose home is ``home`` (``paths.collection_home``)
    from the images below ``root``; ``result.counts`` says how many were new, changed, removed and unchanged.

    ``force`` embeds every file again and starts the collection over (new ids from 0). ``runner`` embeds the
    planned files (default: ``LocalRunner(pipelined)``, this process); the commit is the same whichever runs.
    """
    root = Path(root).resolve()
    side = resize_side(params.image_size)  # images are decoded straight to the square the model's transform wants
    return update_collection(lambda: FolderSource(root, side, scanned=True), home, params, force=force, wait=wait,
                             progress=progress, pipelined=pipelined, runner=runner)


def update_collection(
    listing: Callable[[], StampedSource],
    home: Path,
    params: ExtractParams = ExtractParams(),
    *,
    force: bool = False,
    wait: bool = True,
    progress: Progress = SILENT,
    pipelined: bool | None = None,
    runner: Runner | None = None,
) -> ExtractResult:
    """Create or bring up to date the collection in ``home`` from any source that stamps its items
    (``sources.StampedSource``; ``listing()`` gives it as it is now, and is called under the collection's lock):
    only new items and items whose stamp and content changed are embedded, ids are kept and never reused."""
    started = time.time()
    runner = runner or LocalRunner(pipelined)
    device, precision, batch_size = runner.settings(params)
    folder = features_dir(home)
    with store.forgotten_if_failed(home), cache_lock(home, wait=wait, progress=progress):
        progress.note("comparing the folder with the collection ...")
        source = listing()
        # a collection kept up to date is its source (a folder, by path): which items it holds is the update's
        # business, not the identity's
        identity = identity_params(source.home_identity(), params.weights, params.image_size, precision)
        previous = None if force else load_previous(home, identity)
        if previous is None and not force and store.has_features(home):
            progress.note("the collection was made from another folder, other weights, input size or precision, "
                          "or by an older version: embedding every image again (ids start over)")
        plan = plan_update(source, previous, progress=progress)
        for entry in plan.unnamable:
            progress.note(f"warning: skipped {entry['path']}: {entry['reason']}")
        if not plan.stamps:
            formats = getattr(source, "formats", ())  # what a folder looks for, named so a user sees why
            raise DataError(f"{source.describe_items()} holds no images" + (f" ({', '.join(formats)})" if formats else ""))
        # nothing new, changed, removed, or touched (a moved size/mtime was hashed: its stamp must be recorded)
        if previous is not None and not plan.embed and not len(plan.removed) and not plan.digests:
            manifest = previous.manifest
            counts = {"new": 0, "changed": 0, "removed": 0, "unchanged": plan.unchanged}
            return ExtractResult(folder, manifest["n"], time.time() - started, True, 0, manifest,
                                 skipped=tuple(manifest.get("skipped", [])), counts=counts)
        work_started = time.perf_counter()
        embedded = None
        if plan.embed:
            # the run's identity names exactly the files to embed: a rerun after a kill resumes only the same work
            fingerprint = hashlib.sha256("\n".join(
                f"{k}\t{plan.stamps[k][0]}\t{plan.stamps[k][1]}" for k in plan.embed).encode()).hexdigest()
            job = EmbedJob(source.subset(plan.embed), folder / "partial",
                           {**identity, "embed_sha256": fingerprint}, params.weights, params.image_size, device,
                           precision, batch_size, params.chunk_size, force)
            embedded = runner.embed(job, progress)
        manifest, counts, skipped = _write(home, source, identity, plan, previous, embedded, started, params,
                                           batch_size, embedded.device if embedded else device)
        if embedded is not None:
            shutil.rmtree(embedded.folder, ignore_errors=True)
        finished = time.perf_counter()
        model_seconds = embedded.model_seconds if embedded else 0.0
        return ExtractResult(folder, manifest["n"], time.time() - started, False,
                             embedded.resumed if embedded else 0, manifest, model_seconds,
                             round(finished - work_started - model_seconds, 3), tuple(skipped), counts=counts)


def _write(home: Path, source: StampedSource, identity: dict[str, Any], plan: Plan, previous: Previous | None,
           embedded: Any, started: float, params: ExtractParams, batch_size: int,
           device: str) -> tuple[store.Manifest, dict[str, int], list[dict[str, Any]]]:
    """Assemble and commit the collection's next version: kept rows in id order, then the new images."""
    folder = features_dir(home)
    failed = {e["id"] for e in embedded.skipped} if embedded is not None else set()
    n_changed = len(plan.changed)
    skipped = list(plan.still_skipped) + list(plan.unnamable)
    for e in (embedded.skipped if embedded is not None else []):
        size, mtime = plan.stamps.get(e["path"], (None, None))
        skipped.append({"path": e["path"], "reason": e["reason"], "size": size, "mtime_ns": mtime})
    old_n = len(previous.keys) if previous else 0
    gone = np.zeros(old_n, dtype=bool)
    gone[plan.removed] = True
    changed_at = {int(row): pos for pos, row in enumerate(plan.changed)}
    for row, pos in changed_at.items():
        if pos in failed:
            gone[row] = True  # changed into something unreadable: it leaves the collection
    kept_rows = np.flatnonzero(~gone)
    new_positions = [p for p in range(n_changed, len(plan.embed)) if p not in failed]
    state = previous.manifest.lineage if previous else None
    generation = state.generation + 1 if state else 1
    next_id = int(state.next_id) if state else 0
    keys = [previous.keys[r] for r in kept_rows] + [plan.embed[p] for p in new_positions] if previous \
        else [plan.embed[p] for p in new_positions]
    n = len(keys)
    if n == 0:
        reason = skipped[0]["reason"] if skipped else "no readable images"
        raise DataError(f"none of the images in {source.describe_items()} could be read: {reason}")
    ids = np.concatenate([previous.ids[kept_rows] if previous else np.empty(0, np.int64),
                          np.arange(next_id, next_id + len(new_positions), dtype=np.int64)])
    versions = np.concatenate([previous.versions[kept_rows] if previous else np.empty(0, np.int64),
                               np.full(len(new_positions), generation, dtype=np.int64)])
    for position, row in enumerate(kept_rows.tolist()):
        if row in changed_at:
            versions[position] = generation
    stamps = np.array([plan.stamps[k] for k in keys], dtype=np.int64).reshape(n, 2)
    known = {k: bytes(d) for k, d in zip(previous.keys, previous.digests)} if previous else {}
    read = {plan.embed[pos]: bytes.fromhex(d) for pos, d in embedded.digests.items()} if embedded is not None else {}
    embedded_now = {plan.embed[p] for p in new_positions} | {plan.embed[p] for p in changed_at.values()}

    def digest_of(key: str) -> bytes:
        # a file embedded now has the digest of the bytes that were decoded; a touched one, the one just computed;
        # an item of a source that reports no digests while decoding is asked for its digest now
        found = read.get(key) or plan.digests.get(key)
        if found is None and key in embedded_now:
            try:
                found = source.digest(key)
            except OSError:
                found = b""
        return found or known.get(key, b"")

    digests = np.array([digest_of(k) for k in keys], dtype="S32")
    old_features = load_npy(folder, previous.manifest, "features", make_cmd=MAKE_CMD) if previous else None
    labels, class_names = source.labels_for(keys)
    counts = {"new": len(new_positions), "changed": int(sum(1 for r in changed_at if not gone[r])),
              "removed": int(gone.sum()), "unchanged": plan.unchanged}
    lineage = state.lineage if state else uuid.uuid4().hex
    manifest = commit_features(
        home, _feature_blocks(old_features, kept_rows, changed_at, new_positions, embedded), n,
        {"labels": labels, "ids": ids, "keys": np.array(keys, dtype=str), "stamps": stamps, "digests": digests,
         "versions": versions},
        params=run_params(identity, params.weights, batch_size, device),
        source={**source.describe(), "files": n}, started=started,
        extra={"class_names": class_names, "skipped": skipped,
               "collection": {"lineage": lineage, "generation": generation,
                              "next_id": int(next_id + len(new_positions))},
               "update": counts})
    return manifest, counts, skipped


def _feature_blocks(old_features: np.ndarray | None, kept_rows: np.ndarray, changed_at: dict[int, int],
                    new_positions: list[int], embedded: Any, block: int = 8192) -> Iterator[np.ndarray]:
    """The updated collection's features in id order, a block at a time (memory stays at one block): kept rows
    from the previous features (or, for changed files, from the chunks just embedded), then the new images."""
    cache: dict[int, np.ndarray] = {}

    def embedded_row(position: int) -> np.ndarray:
        c = position // embedded.chunk  # embedded in order: chunk c holds positions c*chunk .. (c+1)*chunk-1
        if c not in cache:
            cache.clear()
            cache[c] = np.load(embedded.files[c])
        return cache[c][position % embedded.chunk]

    for lo in range(0, len(kept_rows), block):
        part = kept_rows[lo : lo + block]
        out = np.array(old_features[part], dtype=np.float32)  # type: ignore[index]
        for j, row in enumerate(part):
            if int(row) in changed_at:
                out[j] = embedded_row(changed_at[int(row)])
        yield out
    for lo in range(0, len(new_positions), block):
        yield np.stack([embedded_row(p) for p in new_positions[lo : lo + block]])


def params_as_before(home: Path, params: ExtractParams, given: set[str]) -> ExtractParams:
    """An update embeds new files as the collection's others were: the weights, input size and precision of its
    last extraction, except those named in ``given`` (what the user set). A new collection: ``params``."""
    from dataclasses import replace

    try:
        recorded = store.features_manifest(home)["params"]
        before = {"weights": recorded["weights_source"], "image_size": recorded["image_size"],
                  "precision": recorded["precision"]}
    except (Stl10SimError, KeyError, TypeError):
        return params  # a new collection (or one that can't be built on): the options as given
    return replace(params, **{name: value for name, value in before.items() if name not in given})


def recorded_folder(home: Path) -> Path:
    """The folder a folder collection was last extracted from.

    Raises:
        InputError: a new collection, or one not made from a folder (give one with ``images``).
    """
    try:
        record = store.features_manifest(home).source
    except Stl10SimError as exc:
        raise InputError(f"{home.name} is a new collection: give its folder with {{images}} DIR",
                         options=("images",)) from exc
    root = folder_root(record)
    if root is None:
        raise InputError(f"{home.name} was not made from a folder: give one with {{images}} DIR", options=("images",))
    return root


def summary_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[k]} {k}" for k in ("new", "changed", "removed", "unchanged"))

