"""Groups of duplicates by kind, and the image each group keeps.

Three kinds, strictest first: ``exact`` (byte-identical files: the collection stores each file's SHA-256),
``near`` (the same picture re-encoded, resized, cropped or recoloured a little: a candidate pair confirmed by its
pixels) and ``similar`` (photos alike by their features, other shots of the same scene). Each kind's links include
the stricter kinds' links, and its groups are the connected components of its links. A group is labelled with
the strictest kind that forms the same group, so exact copies come as ``exact``, not again as ``near``; a group
of the looser kind holds the stricter groups it joins.

The kept image of each group is the first by one order over all images (``keep_order``), so where groups of
different kinds overlap, the looser group's kept image is also kept by every stricter group it holds, and moving
the others never moves a kept image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stl10_similarity.duplicates.pairs import candidate_pairs
from stl10_similarity.duplicates.pixels import pixel_similarity, thumbnails
from stl10_similarity.params import DUPLICATE_KINDS, DuplicatesParams, EngineParams
from stl10_similarity.progress import SILENT, Progress

if TYPE_CHECKING:
    from stl10_similarity.index import LoadedIndex, ShardedIndex

ImageReader = Callable[[int, int], np.ndarray]  # images start:stop as uint8 (n, 3, H, W): a source's ``images``
READ_CHUNK = 256  # images read (and reduced to thumbnails) at a time
MIN_COSINE_OVER_ALL = 2000  # groups up to this size get min_cosine over every pair; larger ones over the kept row


@dataclass(frozen=True)
class DuplicateGroup:
    kind: str  # exact, near or similar
    ids: list[int]  # image ids, ascending
    keep: int  # the id of the image the group keeps
    scores: list[float]  # each member's cosine to the kept image (1.0 for itself)
    min_cosine: float  # the lowest cosine between any two members
    paths: list[str] | None = None  # folder collections: each image's path below the folder
    bytes: list[int | None] | None = None  # each file's size (None: gone)
    resolutions: list[list[int] | None] | None = None  # each image's [width, height] (None: unreadable)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ids": self.ids, "keep": self.keep, "paths": self.paths, "scores": self.scores,
                "min_cosine": self.min_cosine, "bytes": self.bytes, "resolutions": self.resolutions}


@dataclass(frozen=True)
class Facts:
    """What the keep rules look at, per image of a group (files: from the folder; other sources: nothing)."""

    path: str
    bytes: int | None
    mtime: float | None
    resolution: list[int] | None


def file_facts(root: Path, path: str) -> Facts:
    """A file's size, modification time and picture size (read from its header only)."""
    from PIL import Image

    file = root / path
    try:
        stat = file.stat()
    except OSError:
        return Facts(path, None, None, None)
    try:
        with Image.open(file) as img:
            resolution: list[int] | None = [int(img.width), int(img.height)]
    except Exception:  # noqa: BLE001 - any unreadable header: the rules fall back to size and path
        resolution = None
    return Facts(path, stat.st_size, stat.st_mtime, resolution)


def keep_order(rule: str) -> Callable[[int, Facts | None], tuple[Any, ...]]:
    """The sort key of ``rule``: the first image of a group by it is kept. ``largest``: the most pixels, then the
    largest file, then the shortest path; ``oldest``/``newest``: by modification time, then as ``largest``;
    ``prefer:PREFIX``: paths starting with PREFIX first, then as ``largest``. Ties go to the lowest id."""

    def largest(image_id: int, facts: Facts | None) -> tuple[Any, ...]:
        if facts is None:
            return (image_id,)
        pixels = facts.resolution[0] * facts.resolution[1] if facts.resolution else 0
        return (-pixels, -(facts.bytes or 0), len(facts.path), facts.path, image_id)

    if rule in ("oldest", "newest"):
        sign = 1 if rule == "oldest" else -1
        return lambda i, f: (0 if f is None or f.mtime is None else sign * f.mtime, *largest(i, f))
    if rule.startswith("prefer:"):
        prefix = rule.partition(":")[2]
        return lambda i, f: (f is None or not f.path.startswith(prefix), *largest(i, f))
    return largest


def components(n: int, pairs: np.ndarray) -> list[np.ndarray]:
    """The connected components (two or more rows, each sorted) of the graph on ``n`` rows with edges ``pairs``:
    every row takes the lowest label among its neighbours until nothing changes."""
    if not len(pairs):
        return []
    label = np.arange(n)
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        low = np.minimum(label[a], label[b])
        before = label.copy()
        np.minimum.at(label, a, low)
        np.minimum.at(label, b, low)
        label = label[label]  # follow labels to their own labels: halves the rounds on long chains
        if np.array_equal(label, before):
            break
    touched = np.unique(pairs)
    order = touched[np.argsort(label[touched], kind="stable")]
    cuts = np.flatnonzero(np.diff(label[order])) + 1
    return [part for part in np.split(order, cuts) if len(part) >= 2]


def exact_links(digests: np.ndarray | None) -> np.ndarray:
    """Pairs of rows whose files have the same SHA-256 (each copy linked to the first), ``(m, 2)``."""
    if digests is None:
        return np.empty((0, 2), dtype=np.int64)
    values = np.asarray(digests)
    known = np.flatnonzero(values != values.dtype.type(b""))
    _, first, inverse = np.unique(values[known], return_index=True, return_inverse=True)
    leader = known[first][inverse.ravel()]
    copies = leader != known
    return np.stack([leader[copies], known[copies]], axis=1).astype(np.int64)


def read_thumbnails(rows: np.ndarray, images: ImageReader, progress: Progress = SILENT) -> dict[int, np.ndarray]:
    """Each row's thumbnails (``pixels.thumbnails``), read in runs of consecutive rows."""
    found: dict[int, np.ndarray] = {}
    bar = progress.bar(len(rows), "duplicates: pictures", unit="image")
    try:
        starts = np.flatnonzero(np.r_[True, np.diff(rows) != 1])
        for lo, hi in zip(starts.tolist(), np.r_[starts[1:], len(rows)].tolist()):
            for first in range(int(rows[lo]), int(rows[hi - 1]) + 1, READ_CHUNK):
                last = min(first + READ_CHUNK, int(rows[hi - 1]) + 1)
                for row, thumb in zip(range(first, last), thumbnails(images(first, last))):
                    found[row] = thumb
                bar.update(last - first)
    finally:
        bar.close()
    return found


def find_duplicates(index: LoadedIndex | ShardedIndex, params: DuplicatesParams = DuplicatesParams(), *,
                    digests: np.ndarray | None = None, images: ImageReader | None = None, root: Path | None = None,
                    engine: EngineParams = EngineParams(), progress: Progress = SILENT) -> list[DuplicateGroup]:
    """The groups of ``params.kinds``, strictest kind first, then by first id.

    Args:
        digests: each row's file SHA-256 (``S32``, empty for none): exact groups need them.
        images: reads images by row: near-duplicates are confirmed by their pixels. Without it (imported features)
            a near pair is one at cosine >= ``params.near_cosine``.
        root: the folder a folder collection's paths are below: the keep rules read sizes, times and
            resolutions there.
        engine: where candidate pairs are looked for (the groups are the same).
    """
    loosest = max(DUPLICATE_KINDS.index(kind) for kind in params.kinds)
    levels = [exact_links(digests)]
    if loosest >= 1:
        pairs, cosines = candidate_pairs(index, min(params.floor, params.similar), params.neighbours,
                                         engine=engine.engine, address=engine.address, progress=progress)
        if images is None:
            near = cosines >= params.near_cosine
        else:
            shown = read_thumbnails(np.unique(pairs), images, progress) if len(pairs) else {}
            left = np.array([shown[int(r)] for r in pairs[:, 0]]).reshape(len(pairs), *thumbnails_shape())
            right = np.array([shown[int(r)] for r in pairs[:, 1]]).reshape(len(pairs), *thumbnails_shape())
            near = pixel_similarity(left, right) >= params.near
        levels.append(np.concatenate([levels[0], pairs[near]]))
        if loosest >= 2:
            levels.append(np.concatenate([levels[1], pairs[cosines >= params.similar]]))
    order = keep_order(params.keep)
    groups: list[DuplicateGroup] = []
    seen: set[tuple[int, ...]] = set()
    for kind, links in zip(DUPLICATE_KINDS, levels):
        for rows in components(index.n, links):
            key = tuple(rows.tolist())
            if key in seen:  # the same group at a stricter kind
                continue
            seen.add(key)
            if kind in params.kinds:
                groups.append(_group(index, kind, rows, order, root))
    return groups


def thumbnails_shape() -> tuple[int, int]:
    from stl10_similarity.duplicates.pixels import COMPARED, TRIMS

    return len(TRIMS), COMPARED * COMPARED


def _group(index: LoadedIndex | ShardedIndex, kind: str, rows: np.ndarray,
           order: Callable[[int, Facts | None], tuple[Any, ...]], root: Path | None) -> DuplicateGroup:
    ids = index.ids_of(rows).tolist()
    paths = None if index.paths is None else [str(index.paths[row]) for row in rows]
    facts: Sequence[Facts | None] = [None] * len(ids)
    if paths is not None:
        facts = [file_facts(root, p) if root is not None else Facts(p, None, None, None) for p in paths]
    kept = min(range(len(ids)), key=lambda m: order(ids[m], facts[m]))
    vectors = np.asarray(index.features[rows], dtype=np.float32)
    scores = vectors @ vectors[kept]
    if len(rows) <= MIN_COSINE_OVER_ALL:
        lowest = float((vectors @ vectors.T)[np.triu_indices(len(rows), k=1)].min())
    else:
        lowest = float(scores.min())
    has_files = root is not None and paths is not None
    return DuplicateGroup(
        kind, ids, ids[kept], [round(float(s), 6) for s in scores], round(lowest, 6), paths,
        [f.bytes for f in facts if f is not None] if has_files else None,
        [f.resolution for f in facts if f is not None] if has_files else None)
