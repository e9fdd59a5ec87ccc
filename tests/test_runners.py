"""The runner seam: a runner of the test's own plugs into both ingestion paths (STL-10 extraction and folder
updates) with nothing else changed, and gives what the in-process runner gives."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from stl10_fixture import make_images, write_stl10

from stl10_similarity.ingest.extract import extract
from stl10_similarity.ingest.runners import Chunks, EmbedJob, LocalRunner, unreadable_in
from stl10_similarity.ingest.update import update_folder
from stl10_similarity.params import ExtractParams
from stl10_similarity.progress import SILENT
from stl10_similarity.sources import stl10

PARAMS = ExtractParams(weights="none", image_size=64, batch_size=4, chunk_size=8, device="cpu", precision="fp32")


class LastChunkFirst:
    """A second runner, written against the seam only: chunks embedded last first, on a worker thread, and
    written through the same chunk layout."""

    name = "last-chunk-first"

    def __init__(self) -> None:
        self.order: list[int] = []

    def settings(self, params):
        return LocalRunner().settings(params)

    def embed(self, job: EmbedJob, progress=SILENT):
        from stl10_similarity.ingest.model import FeatureModel

        chunks = Chunks(job)
        model = FeatureModel(job.weights, job.image_size, job.device, job.precision)
        chunks.begin()
        keys = job.source.keys()

        def one(span: tuple[int, int]) -> None:
            start, stop = span
            self.order.append(start)
            features = np.concatenate([model(model.stage(job.source.images(lo, hi)))
                                       for lo, hi in chunks.batches(start, stop, job.batch_size)])
            chunks.write(start, features, *unreadable_in(job.source, keys, start, stop))

        with ThreadPoolExecutor(1) as pool:
            list(pool.map(one, reversed(chunks.todo())))
        return chunks.collect(model.device, 0.0)


def _same(a, b, names=("features", "labels", "ids", "keys")) -> None:
    for name in names:
        assert np.array_equal(np.load(a / f"{name}.npy"), np.load(b / f"{name}.npy")), name


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    data = tmp_path_factory.mktemp("stl10") / "data"
    write_stl10(data, n_train=20, n_test=19)
    return stl10.open_source(data, "train+test")


def test_a_runner_of_our_own_extracts_stl10_as_the_local_runner_does(source, tmp_path):
    runner = LastChunkFirst()
    mine = extract(source, tmp_path / "mine", PARAMS, runner=runner)
    theirs = extract(source, tmp_path / "local", PARAMS)
    assert runner.order == [32, 24, 16, 8, 0]  # it really ran, its own way
    _same(mine.folder, theirs.folder)
    assert mine.manifest["params"] == theirs.manifest["params"]


def test_a_runner_of_our_own_updates_a_folder_collection(tmp_path):
    from PIL import Image

    root = tmp_path / "photos"
    for i, image in enumerate(make_images(np.arange(18) % 2, seed=4)):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(root / f"c{i % 2}" / f"{i:03d}.png")
    (root / "c0" / "broken.jpg").write_bytes(b"garbage")
    mine = update_folder(root, tmp_path / "mine", PARAMS, runner=LastChunkFirst())
    theirs = update_folder(root, tmp_path / "local", PARAMS)
    _same(mine.folder, theirs.folder, ("features", "labels", "ids", "keys", "digests", "versions"))
    assert [e["path"] for e in mine.skipped] == [e["path"] for e in theirs.skipped] == ["c0/broken.jpg"]
