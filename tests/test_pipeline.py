"""Reading and writing beside the model (what extract does on GPUs): same features, errors surface, resume holds."""

from __future__ import annotations

import numpy as np
import pytest
from stl10_fixture import write_stl10

from stl10_similarity.ingest.extract import extract
from stl10_similarity.ingest.pipeline import BackgroundWriter, prefetched
from stl10_similarity.params import ExtractParams
from stl10_similarity.sources import stl10

PARAMS = ExtractParams(weights="none", image_size=64, batch_size=8, chunk_size=16, device="cpu", precision="fp32")


def test_prefetched_yields_in_order_and_reraises():
    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetched(broken()))


def test_prefetched_stops_its_thread_when_the_consumer_stops():
    import threading

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    for item in prefetched(endless(), depth=2):
        if item == 3:
            break
    assert not any(t.name == "stl10sim-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 2


def test_background_writer_runs_in_order_and_reports_errors():
    done = []
    writer = BackgroundWriter()
    for i in range(5):
        writer.submit(done.append, i)
    writer.close()
    assert done == [0, 1, 2, 3, 4]
    failing = BackgroundWriter()
    failing.submit(lambda: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError, match="full"):
        failing.close()


@pytest.fixture
def source(tmp_path):
    write_stl10(tmp_path / "data", n_train=40, n_test=30)
    return stl10.open_source(tmp_path / "data", "train+test")


def test_pipelined_extraction_gives_the_same_features(source, tmp_path):
    plain = extract(source, tmp_path / "a", PARAMS, pipelined=False)
    piped = extract(source, tmp_path / "b", PARAMS, pipelined=True)
    a = np.load(plain.folder / "features.npy")
    b = np.load(piped.folder / "features.npy")
    assert a.shape == (70, 1280) and np.array_equal(a, b)


def test_pipelined_extraction_resumes_after_a_failure(source, tmp_path, monkeypatch):
    reference = np.load(extract(source, tmp_path / "ref", PARAMS, pipelined=False).folder / "features.npy")
    calls = {"n": 0}
    real = type(source).images

    def failing(self, start, stop):
        calls["n"] += 1
        if calls["n"] == 6:  # after two whole chunks (16 images = 2 batches each) and a bit
            raise OSError("read error")
        return real(self, start, stop)

    monkeypatch.setattr(type(source), "images", failing)
    with pytest.raises(OSError, match="read error"):
        extract(source, tmp_path / "c", PARAMS, pipelined=True)
    chunks = sorted(p.name for p in (tmp_path / "c" / "features" / "partial").glob("chunk_*.npy"))
    assert chunks[:2] == ["chunk_000000.npy", "chunk_000001.npy"]  # finished chunks were written before giving up
    monkeypatch.setattr(type(source), "images", real)
    resumed = extract(source, tmp_path / "c", PARAMS, pipelined=True)
    assert resumed.resumed_chunks >= 2
    assert np.array_equal(np.load(resumed.folder / "features.npy"), reference)
