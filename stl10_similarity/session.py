"""The one way to query a collection: open a :class:`Session`, call :meth:`Session.query`.

``stl10sim query``, ``stl10sim evaluate`` and the server are thin wrappers over this module. A session
verifies and memory-maps the artifacts once, then answers any number of queries; the feature model is
loaded only when a query brings an image of its own. Importing this module does not import torch.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from stl10_similarity import sources, store
from stl10_similarity.errors import ImageGoneError, InputError, NoImagesError, ParameterError, StaleArtifactError
from stl10_similarity.index import LoadedIndex, ShardedIndex, ensure_index, load_index
from stl10_similarity.params import COMPILED_BATCH, DEVICES, DuplicatesParams, EngineParams, SearchParams
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.search import QueryResult, QueryVector, Searcher, compiled

ImageInput = str | Path | bytes | np.ndarray


class Session:
    """An opened collection: its verified index, its features and, on demand, its images and model."""

    def __init__(self, index: LoadedIndex | ShardedIndex, extract_manifest: store.Manifest, load_ms: float = 0.0,
                 home: Path | None = None, progress: Progress = SILENT, parts: Any = None) -> None:
        self.index = index
        self.parts = parts  # who answers for each shard (None: this process; search.ray_parts.RayParts: Ray actors)
        self.progress = progress
        self.extract_manifest = extract_manifest
        self.load_ms = load_ms
        self.home = home
        self._searchers: dict[int, Searcher] = {}
        self._model: Any = None
        self._source: Any = None
        self._digests: np.ndarray | None = None
        self._tag: str | None = None
        self._mapped = _mapped_files(index)

    @classmethod
    def open(cls, home: Path, *, build: bool = True, progress: Progress = SILENT,
             engine: EngineParams = EngineParams(), mapped: bool = True) -> Session:
        """Open the collection in ``home``.

        Args:
            home: the collection's home (`paths.collection_home`): its features, and its index.
            build: build the index first when it is missing, or stale (with the parameters it was last
                built with); otherwise such an index raises.
            progress: told when the index is built first.
            engine: ``ray``: each shard (an unsharded index is one) is searched by a Ray actor that maps it once.
            mapped: memory-map the artifacts (fast to open); False reads them into memory, so that no other
                process can truncate a page under a query (a long-running server's choice).

        Raises:
            MissingArtifactError: no features (run ``stl10sim extract``), or no index and ``build`` is False.
            StaleArtifactError, IntegrityError: the artifacts don't match their manifests.
        """
        started = time.perf_counter()
        if build:
            ensure_index(home, progress=progress)
        index = load_index(home, mapped=mapped)
        parts = None
        if engine.engine == "ray":
            from stl10_similarity.search.ray_parts import RayParts

            parts = RayParts(home, len(getattr(index, "shards", [index])), engine.address, progress)
        return cls(index, store.features_manifest(home), round((time.perf_counter() - started) * 1e3, 3), home,
                   progress, parts)

    def pin(self) -> None:
        """Read now what later answers need from the collection as opened (its files' digests), for a
        long-running caller: an update on disk then replaces the files, and this session's answers stay its own
        (images of unchanged files keep being served)."""
        self._indexed_digests()

    def changed_on_disk(self) -> str | None:
        """The first memory-mapped artifact that was truncated or rewritten in place since it was mapped, or None.

        Touching a truncated map's pages kills the process (SIGBUS), so a long-running caller (the server) asks
        before each request. Artifacts replaced by rename (as stl10sim writes them) don't count: the old file
        stays mapped and whole until the session closes."""
        for path, mapped, stamp in self._mapped:
            try:
                if mapped.size() < len(mapped):  # the mapped file itself, by its own descriptor: truncated
                    return path
                now = os.stat(path)
            except (OSError, ValueError):
                continue  # gone from its path: replaced by rename, the mapped copy is intact
            if now.st_ino == stamp[0] and (now.st_size, now.st_mtime_ns) != stamp[1:]:
                return path  # the same file, rewritten in place: its pages no longer hold what was verified
        return None

    # ------------------------------------------------------------ the collection

    @property
    def n(self) -> int:
        return self.index.n

    @property
    def class_names(self) -> list[str]:
        return self.index.class_names

    def describe_image(self, image_id: int) -> dict[str, Any]:
        """``{"id", "label", "class_index"}`` (and ``path`` for folder collections) of a collection image."""
        row = self.check_id(image_id)
        ci = int(self.index.labels[row])
        described = {"id": int(image_id), "label": self.searcher().label_name(ci), "class_index": ci}
        path = self.searcher().path(row)
        return described if path is None else {**described, "path": path}

    def index_params(self) -> dict[str, Any]:
        """The parameters the index was built with, as its manifest records them."""
        return dict(self.index.params)

    def weights(self) -> Any:
        """The weights the features came from, as the features manifest names them (None for imports without)."""
        return self.index.features_params.get("weights")

    def images_page(self, offset: int, limit: int, label: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """How many images there are (of class ``label``: a class name, or ``unlabeled``), and those from
        ``offset`` on, at most ``limit``, each as :meth:`describe_image` gives it.

        Raises:
            ParameterError: ``label`` names no class.
        """
        labels = np.asarray(self.index.labels)
        if label is None:
            rows = np.arange(self.n)
        else:
            names = self.class_names
            if label in names:  # a class may be named "unlabeled": its name wins over the filter for none
                wanted = names.index(label)
            elif label == "unlabeled":
                wanted = -1
            else:
                raise ParameterError("label", f"{label!r} is unknown: choose one of {', '.join(names + ['unlabeled'])}")
            rows = np.flatnonzero(labels == wanted)
        page = self.index.ids_of(rows[offset : offset + limit])
        return int(len(rows)), [self.describe_image(int(i)) for i in page]

    def check_id(self, image_id: int) -> int:
        """The row of image ``image_id``; a ParameterError when the collection has no such image."""
        if not isinstance(image_id, (int, np.integer)) or isinstance(image_id, bool):
            raise ParameterError("image_id", f"must be an integer, got {image_id!r}")
        row = self.index.row_of(int(image_id))
        if row is not None:
            return row
        if self.index.ids is None or not 0 <= image_id <= int(self.index.ids[-1]):
            top = self.index.id_of(self.n - 1)
            raise ParameterError("image_id", f"{image_id} is out of range: the collection has {self.n} images "
                                             f"(ids 0..{top})")
        raise ParameterError("image_id", f"{image_id} is not in the collection: that image was removed from its folder")

    def images(self, ids: list[int]) -> list[np.ndarray]:
        """The pixels of collection images, uint8 ``(3, H, W)`` each, read from the source they came from."""
        rows = [self.check_id(i) for i in ids]
        source = self.source()
        return [source.images(row, row + 1)[0] for row in rows]

    def indexed_image(self, image_id: int) -> tuple[np.ndarray, str]:
        """A collection image's pixels exactly as indexed, and a tag that changes whenever they could (an ETag).

        Raises:
            ImageGoneError: the image's file changed or vanished since the collection was extracted.
        """
        row = self.check_id(image_id)
        digests = self._indexed_digests()
        if digests is None:  # a source without per-file digests (STL-10's binary files): the features' digest
            return self.images([image_id])[0], f"{self._features_tag()}-{image_id}"
        source: Any = self.source()  # a source with per-file digests (a folder) reads files one by one
        pixels, read, _ = source.read_one(row)
        path = self.searcher().path(row)
        if read is None:
            raise ImageGoneError(f"image {image_id}'s file {path} is gone or unreadable since it was indexed: "
                                 "run `stl10sim extract` on its folder again")
        if bytes.fromhex(read) != bytes(digests[row]):
            raise ImageGoneError(f"image {image_id}'s file {path} changed since it was indexed: "
                                 "run `stl10sim extract` on its folder again")
        return pixels, read[:32]

    def _features_tag(self) -> str:
        """The features manifest's digest, read once: the session answers from the features it opened."""
        if self._tag is None:
            self._tag = store.features_digest(self.home)[:16] if self.home else "0"
        return self._tag

    def _indexed_digests(self) -> np.ndarray | None:
        """The SHA-256 of each image's file at extraction (None for sources without files), from the features
        this session opened."""
        if self._digests is None and self.home is not None \
                and "digests" in self.extract_manifest.get("artifacts", {}):
            from stl10_similarity.ingest.extract import MAKE_CMD
            from stl10_similarity.store.artifacts import load_npy
            from stl10_similarity.store.paths import features_dir

            self._digests = np.asarray(load_npy(features_dir(self.home), self.extract_manifest, "digests",
                                                make_cmd=MAKE_CMD, mmap=False))
        return self._digests

    def source(self) -> sources.Source:
        if self._source is None:
            try:
                keys = None if self.index.paths is None else [str(k) for k in self.index.paths]
                self._source = sources.reopen(self.extract_manifest.source, keys)
            except InputError as exc:
                raise type(exc)(f"the images the features came from are needed here: {exc.template}",
                                options=exc.options) from exc
        return self._source

    # ------------------------------------------------------------ queries

    def searcher(self, candidates: int = SearchParams.candidates) -> Searcher:
        if candidates not in self._searchers:
            self._searchers[candidates] = Searcher(self.index, candidates, self.parts)
        return self._searchers[candidates]

    def vector(self, image_id: int | None = None, image: ImageInput | None = None, *, name: str | None = None,
               device: str = "auto") -> tuple[QueryVector, np.ndarray | None, float]:
        """The query as every method needs it, the user's pixels (if any) and the ms spent embedding them."""
        if (image_id is None) == (image is None):
            raise ParameterError("image_id", "or {image} must be given, and not both", options=("image",))
        if image_id is not None:
            return self.searcher().for_row(self.check_id(image_id)), None, 0.0
        if device not in DEVICES:
            raise ParameterError("device", f"{device!r} is not one of {', '.join(DEVICES)}")
        if not self.extract_manifest["params"].get("weights"):
            raise NoImagesError(
                "the collection's features were imported without the model that made them, so an image can't be "
                "embedded like them: import them again with {weights} (the MobileNetV2 weights they came from) "
                "and {image_size}, or query by id", options=("weights", "image_size"))
        assert image is not None  # one of the two was given (checked above)
        pixels, label = self._pixels(image, name)
        started = time.perf_counter()
        feature = self.model(device)(pixels[None])[0]
        embed_ms = round((time.perf_counter() - started) * 1e3, 3)
        return self.searcher().for_feature(feature, image=label), pixels, embed_ms

    def query(
        self,
        image_id: int | None = None,
        image: ImageInput | None = None,
        *,
        k: int = SearchParams.k,
        method: str = SearchParams.method,
        candidates: int = SearchParams.candidates,
        name: str | None = None,
        device: str = "auto",
    ) -> QueryResult:
        """The ``k`` images most like a collection image (``image_id``) or an image of yours (``image``).

        Args:
            image_id: id of a collection image (0-based); it is never among its own results.
            image: an image file's path, its encoded bytes, or uint8 pixels ``(3, H, W)`` / ``(H, W, 3)``.
            k: results wanted (fewer only when the collection is smaller).
            method: ``auto`` (default: ``exact`` up to ``params.SCAN_LIMIT`` images, else ``rerank``), ``rerank``,
                ``forest``, ``exact`` or ``forest-query`` (docs/cli.md).
            candidates: how many forest candidates ``rerank`` re-ranks by cosine.
            name: how ``image`` is named in the result (default: its path).
            device: where an ``image`` is embedded.

        Raises:
            ParameterError: an id out of range, or a bad ``k``, ``method`` or ``candidates``.
            InputError: ``image`` is not a readable image.
        """
        SearchParams(k=k, method=method, candidates=candidates)
        vector, pixels, embed_ms = self.vector(image_id, image, name=name, device=device)
        result = self.searcher(candidates).query(vector, k, method)
        timing = {**result.timing_ms, "load": self.load_ms}
        if pixels is not None:
            timing["embed"] = embed_ms
        return replace(result, timing_ms=timing, query_image=pixels)

    def prepare_compiled(self, method: str = SearchParams.method, candidates: int = SearchParams.candidates) -> bool:
        """Load the compiled rerank for this process where ``method`` resolves to rerank and it can run
        (``Searcher.prepare``), saying so when it may take a while: what a process answering many queries of
        ``method`` does first. ``auto`` below ``SCAN_LIMIT`` images is an exact scan, which numba (~130 MB, ~0.4 s)
        would not speed up. Whether rerank runs compiled."""
        searcher = self.searcher(candidates)
        if searcher.resolve(method) != "rerank":
            return searcher.uses_compiled
        if searcher.compilable and not compiled.loaded():
            self.progress.note("loading the compiled search (the first time on a machine it compiles, ~10 s) ...")
        return searcher.prepare()

    def query_many(self, image_ids: Sequence[int], *, k: int = SearchParams.k, method: str = SearchParams.method,
                   candidates: int = SearchParams.candidates, threads: int | None = None) -> list[QueryResult]:
        """:meth:`query` for many collection images at once, answered on ``threads`` threads (default: every
        core), results in the ids' order. Every id is checked before any query runs.

        Raises:
            ParameterError: an id out of range, or a bad ``k``, ``method``, ``candidates`` or ``threads``.
        """
        SearchParams(k=k, method=method, candidates=candidates, threads=threads)
        searcher = self.searcher(candidates)
        vectors = [searcher.for_row(self.check_id(image_id)) for image_id in image_ids]
        if len(vectors) >= COMPILED_BATCH:
            self.prepare_compiled(method, candidates)
        results = searcher.query_many(vectors, k, method, threads)
        return [replace(result, timing_ms={**result.timing_ms, "load": self.load_ms}) for result in results]

    def model(self, device: str = "auto") -> Any:
        """The feature model exactly as the collection was extracted (weights, input size)."""
        if self._model is None:
            from stl10_similarity.ingest.model import FeatureModel, query_precision

            params = self.extract_manifest["params"]
            source = params.get("weights_source", "imagenet")
            precision = query_precision(params.get("precision", "fp32"), device)
            self.progress.note(f"loading the model the collection was extracted with ({source} weights) to embed "
                               "your image ...")
            model = FeatureModel(source, params["image_size"], device, precision)
            if model.weights_id != params["weights"]:
                raise StaleArtifactError(
                    f"the weights at {source} changed since extraction: rerun `stl10sim extract --weights {source}`"
                )
            self._model = model
        return self._model

    # ------------------------------------------------------------ grids

    def grid(self, result: QueryResult, path: Path | None = None) -> bytes:
        """The result grid as PNG bytes (query first, then its matches); also written to ``path`` if given, in
        the format its suffix names (``params.PICTURE_FORMATS``)."""
        from stl10_similarity.grid import render_grid

        if result.query_image is not None:
            query_image = result.query_image
        elif result.query.id is not None:
            query_image = self.images([result.query.id])[0]
        else:
            query_image, _ = self._pixels(result.query.image or "", None)
        png = render_grid(result, query_image, self.images([m.id for m in result.results]))
        if path is not None:
            from stl10_similarity.grid import write_picture

            write_picture(Path(path), png)
        return png

    # ------------------------------------------------------------ duplicates

    def duplicates(self, params: DuplicatesParams = DuplicatesParams(),
                   engine: EngineParams = EngineParams()) -> list[Any]:
        """The collection's groups of duplicates (``duplicates.find_duplicates``): exact copies by the files'
        SHA-256, near-duplicates confirmed by their pixels (by cosine alone when the collection holds no images),
        each group's kept image chosen by ``params.keep`` from the files' sizes, times and resolutions."""
        from stl10_similarity.duplicates import find_duplicates
        from stl10_similarity.duplicates.pixels import READ_SIDE

        images = None
        if "exact" not in params.kinds or len(params.kinds) > 1:
            try:
                keys = None if self.index.paths is None else [str(k) for k in self.index.paths]
                images = sources.reopen(self.extract_manifest.source, keys, side=READ_SIDE).images
            except NoImagesError:
                self.progress.note(f"no images to compare: near-duplicates are pairs at cosine >= "
                                   f"{params.near_cosine}")
        digests = self._indexed_digests()
        if digests is None and "exact" in params.kinds:
            self.progress.note("no file digests (the images are not files): no exact groups")
        return find_duplicates(self.index, params, digests=digests, images=images,
                               root=self.folder_root(), engine=engine, progress=self.progress)

    def folder_root(self) -> Path | None:
        """The folder a folder collection's paths are below (None for other sources)."""
        return sources.folder_root(self.extract_manifest.source)

    def move_duplicates(self, groups: Sequence[Any], target: Path, *, dry_run: bool = False) -> tuple[list[Any],
                                                                                                   Path | None]:
        """Move every image ``groups`` don't keep from the collection's folder to the same path below ``target``
        (``duplicates.moves``): the moves, and the undo record (None on a dry run, which moves nothing).

        Raises:
            InputError: not a folder collection, ``target`` inside its folder or already holding such a file.
            DataError: a file is gone or changed since extraction (nothing is moved).
        """
        from stl10_similarity.duplicates.moves import digests_by_id, move_files, planned_moves

        root = self.folder_root()
        if root is None:
            raise InputError("{move_to} needs a folder collection: this collection's images are not files",
                             options=("move_to",))
        moves = planned_moves(groups, root, target)
        if dry_run or not moves:
            return moves, None
        digests = digests_by_id(self.index.ids_of(np.arange(self.n)), self._indexed_digests())
        return moves, move_files(moves, target, digests, self.progress)

    def duplicates_picture(self, groups: list[Any], path: Path | None = None) -> bytes:
        """Groups of near-duplicates drawn as PNG bytes (``grid.render_groups``); also written to ``path``."""
        from stl10_similarity.grid import MAX_GROUP_IMAGES, MAX_GROUP_ROWS, render_groups, write_picture

        drawn = groups[:MAX_GROUP_ROWS]
        png = render_groups(drawn, [self.images(list(g.ids[:MAX_GROUP_IMAGES])) for g in drawn])
        if path is not None:
            write_picture(Path(path), png)
        return png

    def duplicates_pages(self, groups: list[Any], path: Path) -> list[Path]:
        """Every group drawn, ``grid.MAX_GROUP_ROWS`` a page: ``path``, then ``path``-2, -3, ... (the files written)."""
        from stl10_similarity.grid import MAX_GROUP_ROWS

        written = []
        for page, first in enumerate(range(0, max(len(groups), 1), MAX_GROUP_ROWS), start=1):
            target = Path(path) if page == 1 else Path(path).with_name(f"{Path(path).stem}-{page}{Path(path).suffix}")
            self.duplicates_picture(groups[first : first + MAX_GROUP_ROWS], target)
            written.append(target)
        return written

    def _pixels(self, image: ImageInput, name: str | None) -> tuple[np.ndarray, str]:
        """uint8 ``(3, H, W)`` pixels of the user's image and the name it goes by. Files and bytes go through the
        decoder folder images go through, to the same square, so a file embeds as it would in a folder."""
        from stl10_similarity.ingest.model import resize_side
        from stl10_similarity.sources.images import decode_square

        side = resize_side(int(self.extract_manifest["params"]["image_size"]))
        if isinstance(image, (str, Path)):
            return decode_square(Path(image), side, name or str(image)), name or str(image)
        if isinstance(image, (bytes, bytearray, memoryview)):
            return decode_square(bytes(image), side, name or "uploaded image"), name or "uploaded image"
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or 3 not in (image.shape[0], image.shape[2]) \
                    or min(image.shape) < 1:
                raise ParameterError("image", f"array must be uint8 (3, H, W) or (H, W, 3), got {image.dtype} {image.shape}")
            chw = image if image.shape[0] == 3 else image.transpose(2, 0, 1)
            return np.ascontiguousarray(chw), name or "array"
        raise ParameterError("image", f"must be a path, bytes or a uint8 array, got {type(image).__name__}")


def _mapped_files(index: LoadedIndex | ShardedIndex) -> list[tuple[str, mmap.mmap, tuple[int, int, int]]]:
    """Each memory-mapped file behind the index's arrays: its path, its map and its (inode, size, mtime_ns)."""
    found: dict[str, tuple[str, mmap.mmap, tuple[int, int, int]]] = {}
    values = [value for part in [index, *getattr(index, "shards", [])] for value in vars(part).values()]
    for value in values:
        path, obj = None, value
        while isinstance(obj, np.ndarray):  # a view's base chain ends at the mmap a np.memmap was built on
            path = path or (getattr(obj, "filename", None) if isinstance(obj, np.memmap) else None)
            obj = obj.base
        if path and isinstance(obj, mmap.mmap) and path not in found:
            try:
                st = os.stat(path)
            except OSError:
                continue
            found[path] = (path, obj, (st.st_ino, st.st_size, st.st_mtime_ns))
    return list(found.values())
