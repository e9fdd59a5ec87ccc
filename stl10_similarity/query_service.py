"""What ``stl10sim query`` does between parsing and printing: open the index, turn the
user's ids and image files into query vectors, and draw result grids.

Importing this module does not import torch; only ``--image`` queries load the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import stl10
from .errors import InputError, StaleArtifactError
from .index import LoadedIndex, load_index
from .search import QueryResult, QueryVector, Searcher


@dataclass
class Session:
    index: LoadedIndex
    searcher: Searcher
    extract_manifest: dict[str, Any]
    _model: Any = None

    def vectors(self, image_ids: list[int], images: list[Path], device: str = "auto") -> list[QueryVector]:
        """Validate every query first, so that bad input writes nothing."""
        n = self.index.n
        for image_id in image_ids:
            if not 0 <= image_id < n:
                raise InputError(f"--image-id {image_id} is out of range: the collection has {n} images (ids 0..{n - 1})")
        pixels = [(path, _load(path)) for path in images]
        out = [self.searcher.for_id(i) for i in image_ids]
        if pixels:
            model = self.model(device)
            for path, image in pixels:
                out.append(self.searcher.for_feature(model(image[None])[0], image=str(path)))
        return out

    def model(self, device: str) -> Any:
        """The feature model exactly as the collection was extracted (weights, input size)."""
        if self._model is None:
            from .features import FeatureModel, query_precision

            params = self.extract_manifest["params"]
            source = params.get("weights_source", "imagenet")
            precision = query_precision(params.get("precision", "fp32"), device)
            model = FeatureModel(source, params["image_size"], device, precision)
            if model.weights_id != params["weights"]:
                raise StaleArtifactError(
                    f"the weights at {source} changed since extraction: rerun `stl10sim extract --weights {source}`"
                )
            self._model = model
        return self._model

    def draw(self, result: QueryResult, vector: QueryVector, path: Path) -> Path:
        from .grid import render_grid

        collection = self.collection()
        ids = [m.id for m in result.results]
        matches = np.stack([collection.images(i, i + 1)[0] for i in ids]) if ids else np.empty((0, 3, 96, 96), np.uint8)
        if vector.exclude is not None:
            query_image = collection.images(vector.exclude, vector.exclude + 1)[0]
        else:
            query_image = _load(Path(str(result.query.image)))
        return render_grid(result, query_image, matches, path)

    def collection(self) -> stl10.Collection:
        params = self.extract_manifest["params"]
        data_dir = Path(self.extract_manifest["inputs"]["data_dir"])
        try:
            return stl10.open_collection(data_dir, params["split"], params["limit"])
        except InputError as exc:
            raise InputError(f"--png needs the images the features came from: {exc}") from exc


def _load(path: Path) -> np.ndarray:
    from .images import load_rgb

    return load_rgb(path)


def open_session(cache_dir: Path, candidates: int = 100) -> Session:
    from .features import load_manifest

    index = load_index(cache_dir)
    return Session(index, Searcher(index, candidates), load_manifest(cache_dir))
