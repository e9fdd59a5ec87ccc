"""Moving the images a group doesn't keep out of the collection's folder, and putting them back. Nothing is ever
deleted: a file leaves its place only as a hard link made under the target folder first (or, across file systems,
a copy verified by its SHA-256), and the undo record naming every planned move is on disk before the first one.

A kill at any point leaves each file in one of three states the undo handles: not moved (at its place), moved
(under the target), or both (the same bytes twice: the copy under the target is dropped).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity.duplicates.groups import DuplicateGroup
from stl10_similarity.errors import DataError, InputError
from stl10_similarity.params import DUPLICATE_KINDS
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.store.artifacts import sha256_file, write_json

RECORD_FORMAT = 1
RECORD_PREFIX = "stl10sim-undo-"
PARTIAL = ".stl10sim-partial"  # suffix of a copy still being written across file systems


@dataclass(frozen=True)
class Move:
    id: int
    source: Path  # the file in the collection's folder
    target: Path  # where it goes: the same relative path under the target folder


@dataclass
class UndoReport:
    restored: int = 0  # files put back
    in_place: int = 0  # files that were never moved (or were put back before)
    problems: list[str] = field(default_factory=list)  # files left alone, and why


def planned_moves(groups: Sequence[DuplicateGroup], root: Path, target: Path) -> list[Move]:
    """Every image of ``groups`` that its loosest group doesn't keep, moved to the same path below ``target``.

    Groups of a looser kind hold the stricter ones they join (``groups``), so each such group keeps one image in
    all: exact copies of a photo whose near-duplicate is larger all move.

    Raises:
        InputError: the collection has no folder, ``target`` is inside it, a file is gone, or a target exists.
    """
    root, target = Path(root).resolve(), Path(target).resolve()
    if target == root or root in target.parents:
        raise InputError(f"{{move_to}} {target} is inside the collection's folder {root}: the next extract would "
                         "index the moved files again; choose a folder outside it", options=("move_to",))
    deciding: dict[int, DuplicateGroup] = {}  # each image's loosest group: its kept image is the one kept
    for group in sorted(groups, key=lambda g: DUPLICATE_KINDS.index(g.kind)):
        if group.paths is None:
            raise InputError("{move_to} needs a folder collection: this collection's images are not files",
                             options=("move_to",))
        deciding.update(dict.fromkeys(group.ids, group))
    moves = {}
    for image_id, group in deciding.items():
        if image_id != group.keep:
            assert group.paths is not None
            path = group.paths[group.ids.index(image_id)]
            moves[image_id] = Move(image_id, root / path, target / path)
    missing = [str(m.source) for m in moves.values() if not m.source.is_file()]
    if missing:
        raise DataError(f"{len(missing)} file(s) to move are gone since the collection was extracted (first: "
                        f"{missing[0]}): run `stl10sim extract` on the collection again")
    taken = [str(m.target) for m in moves.values() if os.path.lexists(m.target)]
    if taken:
        raise InputError(f"{{move_to}} already holds {len(taken)} of the files to move (first: {taken[0]}): "
                         "nothing was moved; choose an empty folder", options=("move_to",))
    return sorted(moves.values(), key=lambda m: m.id)


def move_files(moves: Sequence[Move], target: Path, digests: dict[int, bytes] | None = None,
               progress: Progress = SILENT) -> Path:
    """Move ``moves`` and return the undo record, written (in ``target``) before the first file moves.

    ``digests``: each image's SHA-256 when the collection was extracted; a file whose bytes differ now is not
    moved (the groups were found on other pictures), and nothing is.
    """
    target = Path(target).resolve()
    hashed = []
    bar = progress.bar(len(moves), "duplicates: checking files", unit="file")
    try:
        for move in moves:
            sha = sha256_file(move.source)
            if digests is not None and move.id in digests and bytes.fromhex(sha) != digests[move.id]:
                raise DataError(f"{move.source} changed since the collection was extracted: nothing was moved; run "
                                "`stl10sim extract` on the collection again")
            hashed.append({"id": move.id, "from": str(move.source), "to": str(move.target), "sha256": sha,
                           "bytes": move.source.stat().st_size})
            bar.update(1)
    finally:
        bar.close()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    record = target / f"{RECORD_PREFIX}{stamp}-{os.getpid()}.json"
    write_json(record, {"format": RECORD_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "moved_to": str(target), "moves": hashed})
    bar = progress.bar(len(moves), "duplicates: moving", unit="file")
    try:
        for move in moves:
            move.target.parent.mkdir(parents=True, exist_ok=True)
            _relink(move.source, move.target)
            bar.update(1)
    finally:
        bar.close()
    return record


def _relink(source: Path, target: Path) -> None:
    """Move one file without ever having no copy: link (or copy and verify) it to ``target``, then unlink
    ``source``. Never replaces an existing ``target``."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        partial = target.with_name(target.name + PARTIAL)
        shutil.copy2(source, partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        if sha256_file(partial) != sha256_file(source):
            os.unlink(partial)  # our own unfinished copy, never the user's file
            raise DataError(f"copying {source} to {target} gave different bytes: it was left in place") from exc
        os.link(partial, target)  # fails if target appeared meanwhile: never overwrite
        os.unlink(partial)
    os.unlink(source)


def read_record(path: Path) -> dict[str, Any]:
    """An undo record, checked enough to act on.

    Raises:
        InputError: not a readable stl10sim undo record.
    """
    try:
        record = json.loads(Path(path).read_text())
        moves = record["moves"]
        if record.get("format") != RECORD_FORMAT or not all({"from", "to", "sha256"} <= set(m) for m in moves):
            raise ValueError("unknown format")
    except FileNotFoundError as exc:
        raise InputError(f"{{undo}} {path} does not exist", options=("undo",)) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{{undo}} {path} is not an stl10sim undo record ({exc})", options=("undo",)) from exc
    return dict(record)


def undo_moves(record_path: Path, progress: Progress = SILENT) -> UndoReport:
    """Put every file an undo record names back where it was, byte-identical; files whose bytes changed since
    they were moved, or whose place is taken by other bytes, are left where they are and listed."""
    record = read_record(record_path)
    report = UndoReport()
    bar = progress.bar(len(record["moves"]), "duplicates: putting back", unit="file")
    try:
        for entry in record["moves"]:
            _put_back(Path(entry["from"]), Path(entry["to"]), entry["sha256"], report)
            bar.update(1)
    finally:
        bar.close()
    top = Path(record["moved_to"])
    for entry in record["moves"]:  # folders the moves made, now empty (removing an empty folder loses nothing)
        folder = Path(entry["to"]).parent
        while folder != top and top in folder.parents:
            with contextlib.suppress(OSError):
                folder.rmdir()
            folder = folder.parent
    return report


def _put_back(source: Path, moved: Path, sha: str, report: UndoReport) -> None:
    partial = moved.with_name(moved.name + PARTIAL)
    if partial.exists():  # a copy a killed move was still writing: the file itself was not unlinked
        partial.unlink()
    here, there = source.is_file(), moved.is_file()
    if here and sha256_file(source) != sha:
        report.problems.append(f"{source} holds other bytes than the file moved from it: {moved} was left where "
                               "it is")
        return
    if here:
        if there and sha256_file(moved) == sha:
            moved.unlink()  # the same bytes are at their place: a killed move had linked but not unlinked
        report.in_place += 1
        return
    if not there:
        report.problems.append(f"{source} is not at its place, nor at {moved}")
        return
    if sha256_file(moved) != sha:
        report.problems.append(f"{moved} changed since it was moved: left where it is")
        return
    source.parent.mkdir(parents=True, exist_ok=True)
    _relink(moved, source)
    report.restored += 1


def digests_by_id(ids: np.ndarray, digests: np.ndarray | None) -> dict[int, bytes] | None:
    """``{id: SHA-256}`` from a collection's per-row digests (None when it has none)."""
    if digests is None:
        return None
    return {int(i): bytes(d) for i, d in zip(np.asarray(ids).tolist(), digests)}
