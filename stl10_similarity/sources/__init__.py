"""Where a collection's images come from: the :class:`Source` interface and how to reopen one.

A source is a fixed, ordered list of images; an image's id is its position (among the images that could
be read). Extraction reads images in ranges, records the source's ``describe()`` in the features manifest,
and grids (and the server) reopen the same source from that record to show the pixels. Implementations:
STL-10's binary files (``stl10.Stl10Source``) and a folder of image files (``folders.FolderSource``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from stl10_similarity.errors import IntegrityError


class Source(Protocol):
    kind: str

    @property
    def size(self) -> int:
        """How many images."""

    @property
    def class_names(self) -> list[str]:
        """Class names, indexed by the labels; empty when the source has no labels."""

    def keys(self) -> list[str]:
        """A stable key per image (what identifies it across runs), in id order."""

    def labels(self) -> np.ndarray:
        """int16 class index per image, -1 for unlabelled ones."""

    def images(self, start: int, stop: int) -> np.ndarray:
        """Images with ids ``start:stop`` as uint8 ``(n, 3, H, W)``."""

    def identity(self) -> dict[str, Any]:
        """What decides which images these are: part of the features' identity (cache key)."""

    def describe(self) -> dict[str, Any]:
        """A JSON record, kept in the features manifest, from which :func:`reopen` opens this source again."""


class StampedSource(Source, Protocol):
    """A source whose items can be stamped cheaply, so that a collection of it can be kept up to date
    (``ingest.update.update_collection``): an item whose stamp is unchanged is unchanged; one whose stamp moved
    is compared by its digest; only new and changed items are embedded. Folders are the first (stamp: size and
    mtime_ns; digest: SHA-256 of the file)."""

    unnamable: list[dict[str, Any]]  # items left out before they had a key: {"path", "reason"}

    def stamp(self, key: str) -> tuple[int, int]:
        """Two integers that change whenever the item may have (OSError when the item is gone)."""

    def digest(self, key: str) -> bytes:
        """32 bytes that identify the item's content (OSError when it can't be read)."""

    def subset(self, keys: list[str]) -> Source:
        """A source holding exactly these items, in this order (what the update embeds)."""

    def labels_for(self, keys: list[str]) -> tuple[np.ndarray, list[str]]:
        """Labels of these items, and the class names they index."""

    def home_identity(self) -> dict[str, Any]:
        """What makes this the same collection across updates (not which items it holds)."""

    def describe_items(self) -> str:
        """Where the items are, in a few words, for messages."""


# kind -> the module that implements it: ``reopen(record, keys)``, ``describe_record(record)``,
# ``KEYS_ARE_PATHS`` (whether its keys are paths that results should carry) and ``REOPENS_BY_KEYS`` (whether
# ``reopen(record, some_keys)`` holds exactly those images, which lets a worker read one chunk). A new kind of source is a module
# and a line here; nothing else in the package asks which kind a collection is.
KINDS = {"stl10": "stl10", "folder": "folders", "import": "imported"}


def _module(record: dict[str, Any]) -> Any:
    from importlib import import_module

    kind = record.get("kind")
    if kind not in KINDS:
        raise IntegrityError(f"the features were made from an unknown source {kind!r}: rerun `stl10sim extract`")
    return import_module(f".{KINDS[kind]}", __package__)


def reopen(record: dict[str, Any], keys: list[str] | None = None, side: int | None = None) -> Source:
    """Open the source a features manifest recorded (for grids and the server), holding the collection's images
    in id order (``keys``: the features' own list, which leaves out files that could not be read). ``side``:
    images at this side instead of the extraction's, for sources that resize (folders): smaller decodes faster."""
    if side is not None and "side" in record:
        record = {**record, "side": side}
    return _module(record).reopen(record, keys)


def describe_record(record: dict[str, Any]) -> str:
    """A source record in a few words, for ``stl10sim collections``."""
    try:
        return _module(record).describe_record(record)
    except IntegrityError:
        return str(record.get("kind"))


def folder_root(record: dict[str, Any]) -> Path | None:
    """The folder a source's image paths are below, for sources made from a folder (None for others)."""
    return Path(record["root"]) if keys_are_paths(record) and "root" in record else None


def keys_are_paths(record: dict[str, Any]) -> bool:
    """Whether the collection's keys are paths, which every result then carries."""
    try:
        return bool(_module(record).KEYS_ARE_PATHS or record.get("paths"))
    except IntegrityError:
        return False


def reopens_by_keys(record: dict[str, Any]) -> bool:
    """Whether ``reopen(record, keys)`` holds exactly ``keys``' images (so a remote worker can read one chunk)."""
    try:
        return bool(_module(record).REOPENS_BY_KEYS)
    except IntegrityError:
        return False
