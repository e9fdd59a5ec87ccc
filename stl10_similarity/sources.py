"""Where a collection's images come from: the :class:`Source` interface and how to reopen one.

A source is a fixed, ordered list of images; an image's id is its position (among the images that could
be read). Extraction reads images in ranges, records the source's ``describe()`` in the features manifest,
and grids (and the server) reopen the same source from that record to show the pixels. Implementations:
STL-10's binary files (``stl10.Stl10Source``) and a folder of image files (``folders.FolderSource``).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .errors import IntegrityError, NoImagesError


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


def reopen(record: dict[str, Any], keys: list[str] | None = None) -> Source:
    """Open the source a features manifest recorded (for grids and the server), holding the collection's images
    in id order (``keys``: the features' own list, which leaves out files that could not be read)."""
    kind = record.get("kind")
    if kind == "stl10":
        from . import stl10

        return stl10.reopen(record)
    if kind == "folder":
        from . import folders

        return folders.reopen(record, keys)
    if kind == "import":
        raise NoImagesError(f"the collection was imported from features ({record.get('features')}): it holds no "
                            "images to show; query it by id (text or --json)")
    raise IntegrityError(f"the features were extracted from an unknown source {kind!r}: rerun `stl10sim extract`")
