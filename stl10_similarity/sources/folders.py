"""A folder of your own images as a :class:`~stl10_similarity.sources.Source`.

Recursive; JPEG, PNG, WebP, BMP, TIFF and GIF (first frame); any mode; decoded by the one image decoder
(``images.decode_square``: EXIF orientation, format whitelist and size limits, as for uploads).
Labels follow torchvision's ImageFolder: when every image sits below a first-level subfolder, the subfolder
names (sorted) are the classes; otherwise the images are unlabelled. Each image is decoded straight to the
square the model's own transform starts from, on a pool of threads (Pillow decodes without the GIL).
A file that can't be decoded (or is over the decoder's limits) becomes a blank image here and is listed in
``unreadable``; the extract stage leaves it out of the collection with a warning.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity.errors import DataError
from stl10_similarity.params import IMAGE_SUFFIXES
from stl10_similarity.sources.images import ImageError, decode_square, read_image_file, why_refused


def scan(root: Path, skipped: list[tuple[str, str]] | None = None) -> list[str]:
    """Relative POSIX paths of the image files below ``root``, sorted (hidden files and folders skipped).

    What can't be one of the collection's images is left out and, with why, goes to ``skipped`` for the caller to
    warn about: a name that is not valid UTF-8 (it can't be a key in manifests, JSON, the page; written with its
    bad bytes escaped, ``\\xff``), a FIFO, device or socket, a dangling or looping symlink, a symlink leading out
    of the folder, and a symlinked folder (not followed: it could loop, or lead anywhere)."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of images")
    found = []
    for folder, dirs, files in os.walk(root):
        linked = [d for d in dirs if not d.startswith(".") and os.path.islink(os.path.join(folder, d))]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in linked)
        for name in linked:
            _skip(skipped, (Path(folder) / name).relative_to(root).as_posix(),
                  "is a symlinked folder: not followed (it could loop or lead out of the folder)")
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                path = Path(folder) / name
                key = path.relative_to(root).as_posix()
                try:
                    key.encode("utf-8")  # os.walk smuggles undecodable bytes in as lone surrogates
                except UnicodeEncodeError:
                    _skip(skipped, key, "its name is not valid UTF-8: rename it to include it")
                    continue
                why = why_refused(path, root)
                if why:
                    _skip(skipped, key, why)
                    continue
                found.append(key)
    return sorted(found)


def _skip(skipped: list[tuple[str, str]] | None, key: str, reason: str) -> None:
    if skipped is not None:
        skipped.append((escaped(key), reason))


def escaped(name: str) -> str:
    """A file name from the file system, printable: bytes that are not UTF-8 written as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def folder_labels(keys: list[str]) -> tuple[np.ndarray, list[str]]:
    """ImageFolder's labels for relative paths: when every path has a first-level folder, those folders
    (sorted) are the classes; otherwise every image is unlabelled (-1)."""
    parts = [k.split("/", 1) for k in keys]
    if not keys or any(len(p) < 2 for p in parts):
        return np.full(len(keys), -1, dtype=np.int16), []
    names = sorted({p[0] for p in parts})
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[p[0]] for p in parts], dtype=np.int16), names


class FolderSource:
    """The image files below ``root`` in sorted path order (or exactly ``keys``, when reopened)."""

    kind = "folder"
    formats = IMAGE_SUFFIXES  # the file suffixes read as images

    def __init__(self, root: Path, side: int, keys: list[str] | None = None, threads: int | None = None,
                 scanned: bool = False) -> None:
        """``scanned``: the folder as it is now for an update, which may hold no image yet (the update says so)."""
        self.root = Path(root).resolve()
        self.side = side
        left_out: list[tuple[str, str]] = []
        self._keys = scan(self.root, left_out) if keys is None else list(keys)
        # files that can't be images of the collection, left out: an update lists them among the skipped
        self.unnamable = [{"path": name, "reason": reason} for name, reason in left_out]
        if not self._keys and not scanned:
            raise DataError(f"{self.root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.threads = threads or min(8, os.cpu_count() or 1)
        self.unreadable: dict[int, str] = {}
        self.digests: dict[int, str] = {}  # SHA-256 of each file read, from the same bytes that were decoded
        self._pool: ThreadPoolExecutor | None = None
        self._labels, self._class_names = folder_labels(self._keys)

    @property
    def size(self) -> int:
        return len(self._keys)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def keys(self) -> list[str]:
        return list(self._keys)

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def images(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop``; an unreadable one is blank and its reason goes to ``unreadable``."""
        ids = range(start, min(stop, self.size))

        def load(i: int) -> np.ndarray:
            pixels, digest, reason = self.read_one(i)
            if digest is not None:
                self.digests[i] = digest
            if reason is not None:
                self.unreadable[i] = reason
            return pixels

        if len(ids) > 1 and self.threads > 1:
            if self._pool is None:  # one pool for the source's life: starting threads per batch cost ~20 %
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="stl10sim-decode")
            decoded = list(self._pool.map(load, ids))
        else:
            decoded = [load(i) for i in ids]
        if not decoded:
            return np.empty((0, 3, self.side, self.side), np.uint8)
        return np.stack(decoded)

    def read_one(self, i: int) -> tuple[np.ndarray, str | None, str | None]:
        """Image ``i`` (blank if unreadable), the SHA-256 of the bytes it was decoded from (None if none could be
        read) and why it is unreadable (None if it is not). Read once: hashed and decoded from the same bytes."""
        digest = None
        try:
            data = read_image_file(self.root / self._keys[i], self.root, self._keys[i])
            digest = hashlib.sha256(data).hexdigest()
            return decode_square(data, self.side, self._keys[i]), digest, None
        except ImageError as exc:
            reason = exc.reason
        except Exception as exc:  # a read error, or anything a decoder raises: none may stop the run
            reason = f"{exc.__class__.__name__}: {exc}"
        return np.zeros((3, self.side, self.side), np.uint8), digest, reason[:200]

    def identity(self) -> dict[str, Any]:
        """The folder and a fingerprint of its files (path, size, mtime): any change means new features."""
        digest = hashlib.sha256()
        for key in self._keys:
            try:
                st = (self.root / key).stat()
                digest.update(f"{key}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{key}\tmissing\n".encode())
        return {"images": str(self.root), "side": self.side, "files_sha256": digest.hexdigest()}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root), "side": self.side, "files": self.size}

    # ------------------------------------------------------------ stamps: a folder collection kept up to date

    def stamp(self, key: str) -> tuple[int, int]:
        """The file's size and mtime_ns (OSError when it is gone)."""
        st = (self.root / key).stat()
        return st.st_size, st.st_mtime_ns

    def digest(self, key: str) -> bytes:
        """The SHA-256 of the file's bytes (OSError when it can't be read, or is not a regular file inside the
        folder any more)."""
        try:
            return hashlib.sha256(read_image_file(self.root / key, self.root, key)).digest()
        except ImageError as exc:
            raise OSError(exc.reason) from exc

    def subset(self, keys: list[str]) -> FolderSource:
        return FolderSource(self.root, self.side, keys=keys, threads=self.threads)

    def labels_for(self, keys: list[str]) -> tuple[np.ndarray, list[str]]:
        return folder_labels(keys)

    def home_identity(self) -> dict[str, Any]:
        """A folder collection is its folder (by path) and decoding size, whatever files it holds."""
        return {"images": str(self.root), "side": self.side}

    def describe_items(self) -> str:
        return str(self.root)


KEYS_ARE_PATHS = True  # results carry each image's path below the folder
REOPENS_BY_KEYS = True  # reopened with some keys, it holds just those files (a chunk for a worker)


def describe_record(record: dict[str, Any]) -> str:
    return f"folder {record['root']}"


def reopen(record: dict[str, Any], keys: list[str] | None) -> FolderSource:
    """The folder a features manifest recorded, holding exactly the collection's images (``keys``, in id order)."""
    root = Path(record["root"])
    if not root.is_dir():
        raise DataError(f"the image folder {root} the features came from is gone")
    return FolderSource(root, int(record["side"]), keys=keys)
