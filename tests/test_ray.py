"""The ray engine (the optional extra): the same features, ids and duplicate groups as in-process, on a local
Ray; a killed actor or a killed driver loses nothing; clear exit-2 errors when Ray can't be used."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, invoke
from stl10_fixture import make_images

from stl10_similarity.duplicates import find_duplicates
from stl10_similarity.errors import EngineError
from stl10_similarity.ingest.runners import LocalRunner
from stl10_similarity.ingest.update import update_folder
from stl10_similarity.params import DuplicatesParams, EngineParams, ExtractParams
from stl10_similarity.session import Session

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]  # a local Ray starts: the full suite, not the fast tier
from stl10_similarity.ingest.ray_runner import RayRunner  # noqa: E402
from stl10_similarity.ray_support import connect  # noqa: E402

PARAMS = ExtractParams(weights="none", image_size=64, batch_size=4, chunk_size=8)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module (2 CPUs, as on the machine the issue measured): started once, it is reused."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _folder(tmp_path: Path, n: int = 36, broken: bool = True) -> Path:
    from PIL import Image

    root = tmp_path / "photos"
    for i, image in enumerate(make_images(np.arange(n) % 3, seed=5)):
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:04d}.png")
    if broken:
        (root / "class0" / "broken.png").write_bytes(b"not an image")
    return root


def _local_reference(root: Path, home: Path, params: ExtractParams = PARAMS):
    """In-process extraction on one thread, as each Ray actor (num_cpus=1) runs: bit-identical features."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return update_folder(root, home, params, runner=LocalRunner())
    finally:
        torch.set_num_threads(threads)


def _arrays(home: Path) -> dict[str, np.ndarray]:
    folder = home / "features"
    return {name: np.load(folder / f"{name}.npy") for name in ("features", "keys", "ids", "labels", "digests")}


def test_ray_extraction_equals_in_process(tmp_path):
    root = _folder(tmp_path)
    local = _local_reference(root, tmp_path / "local")
    remote = update_folder(root, tmp_path / "ray", PARAMS, runner=RayRunner(actors=2))
    a, b = _arrays(tmp_path / "local"), _arrays(tmp_path / "ray")
    for name in a:
        assert np.array_equal(a[name], b[name]), name  # features bit for bit, ids, keys, labels, digests
    assert [e["path"] for e in remote.skipped] == [e["path"] for e in local.skipped] == ["class0/broken.png"]
    assert remote.counts == local.counts
    # and an update embeds only the new file on Ray, keeping every id
    from PIL import Image

    Image.fromarray(make_images(np.array([1]), seed=9)[0].transpose(1, 2, 0)).save(root / "class1" / "new.png")
    runner = RayRunner(actors=2)
    update = update_folder(root, tmp_path / "ray", PARAMS, runner=runner)
    assert update.counts == {"new": 1, "changed": 0, "removed": 0, "unchanged": 36}
    after = _arrays(tmp_path / "ray")
    assert np.array_equal(after["ids"][:-1], b["ids"]) and after["ids"][-1] == b["ids"].max() + 1
    assert runner.peak_mb > 0


def test_a_killed_actor_is_replaced_and_every_image_is_embedded_once(tmp_path):
    root = _folder(tmp_path, n=60, broken=False)
    params = ExtractParams(weights="none", image_size=160, batch_size=1, chunk_size=1)  # 60 chunks: work left to retry
    _local_reference(root, tmp_path / "local", params)
    runner = RayRunner(actors=2)
    killed = []

    def kill_one_actor_once_work_has_started() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            if runner.pool and len(runner.pids) >= 2:  # both actors have finished a chunk
                ray.kill(runner.pool[0], no_restart=False)  # as a crash: Ray restarts it and retries its chunks
                killed.append(True)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_actor_once_work_has_started)
    killer.start()
    result = update_folder(root, tmp_path / "ray", params, runner=runner)
    killer.join()
    assert killed
    # both actors worked before the kill; whether the restarted process gets a chunk of its own depends on how
    # far the survivor got meanwhile (a CI run had it finish them all), so what is asserted is what users rely
    # on: the job survives the crash and every image is embedded once, as in-process
    assert len(runner.pids) >= 2
    assert result.n == 60 and len(set(np.load(tmp_path / "ray" / "features" / "keys.npy"))) == 60
    assert np.array_equal(_arrays(tmp_path / "ray")["features"], _arrays(tmp_path / "local")["features"])


class _StopAfter:
    """A progress whose bar raises after ``chunks`` updates: the driver is interrupted mid-job."""

    def __init__(self, chunks: int) -> None:
        self.left = chunks

    def note(self, message: str) -> None:
        pass

    def bar(self, total: int, desc: str, unit: str = "it", initial: int = 0):
        outer = self

        class Bar:
            def update(self, n: int = 1) -> None:
                outer.left -= 1
                if outer.left <= 0:
                    raise KeyboardInterrupt

            def close(self) -> None:
                pass

        return Bar()


def test_a_rerun_after_a_killed_driver_embeds_only_what_is_missing(tmp_path):
    root = _folder(tmp_path, n=40, broken=False)
    _local_reference(root, tmp_path / "local")
    with pytest.raises(KeyboardInterrupt):
        update_folder(root, tmp_path / "ray", PARAMS, runner=RayRunner(actors=2), progress=_StopAfter(2))
    assert not (tmp_path / "ray" / "features" / "manifest.json").exists()  # nothing committed half-way
    result = update_folder(root, tmp_path / "ray", PARAMS, runner=RayRunner(actors=2))
    assert result.resumed_chunks >= 2
    assert np.array_equal(_arrays(tmp_path / "ray")["features"], _arrays(tmp_path / "local")["features"])


def test_ray_duplicates_give_the_same_groups(tmp_path):
    from test_duplicates import _index

    index, copies = _index(n=3000, copies=40)
    local = find_duplicates(index, DuplicatesParams(kinds=("near", "similar")))
    remote = find_duplicates(index, DuplicatesParams(kinds=("near", "similar")), engine=EngineParams(engine="ray"))
    assert len(local) >= copies and remote == local


def test_the_cli_runs_extract_and_duplicates_on_ray(tmp_path):
    root = _folder(tmp_path, n=24)
    (root / "class2" / "copy.png").write_bytes((root / "class2" / "0002.png").read_bytes())  # an exact copy
    out = invoke("extract", "--images", str(root), "--collection", "mine", *FAST, "--engine", "ray", "--actors", "2")
    assert out.exit_code == 0, out.output
    assert "25 new" in out.stdout  # 24 photos and the copy; the broken file skipped
    local = invoke("duplicates", "--collection", "mine", "--json")
    remote = invoke("duplicates", "--collection", "mine", "--json", "--engine", "ray")
    assert remote.exit_code == 0, remote.output
    groups = [json.loads(line) for line in remote.stdout.splitlines() if line.startswith("{")]
    assert remote.stdout == local.stdout
    assert any({"class2/0002.png", "class2/copy.png"} <= set(g["paths"]) for g in groups)


def test_ray_options_without_the_ray_engine_and_stl10_on_ray_exit_2(tmp_path):
    root = _folder(tmp_path, n=6)
    out = invoke("extract", "--images", str(root), "--collection", "x", *FAST, "--actors", "2")
    assert out.exit_code == 2 and "--actors is for --engine ray" in out.output
    out = invoke("extract", *FAST, "--engine", "ray")
    assert out.exit_code == 2 and "folder collections" in out.output


def test_an_unreachable_address_and_a_missing_ray_are_one_line_exit_2(tmp_path, monkeypatch):

    from served import free_port

    port = free_port()  # nobody listens there
    root = _folder(tmp_path, n=6)
    ray.shutdown()  # connect() only dials out when this process has no Ray yet
    try:
        started = time.time()
        out = invoke("extract", "--images", str(root), "--collection", "x", *FAST, "--engine", "ray",
                     "--address", f"127.0.0.1:{port}")
        assert out.exit_code == 2 and time.time() - started < 30
        error = [line for line in out.output.splitlines() if line.startswith("Error")]
        assert len(error) == 1 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in error[0]
        monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
        with pytest.raises(EngineError, match=r"pip install 'stl10sim\[ray\]'"):
            connect()
    finally:
        monkeypatch.undo()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")


def _imported_collection(tmp_path: Path, n: int, seed: int) -> tuple[str, Path]:
    """``n`` synthetic features imported as the collection ``ext``: its cache dir (for --cache-dir) and its home."""
    from stl10_similarity.synthetic import synthetic_features

    np.save(tmp_path / "f.npy", synthetic_features(n, seed=seed)[0])
    cache = str(tmp_path / "cache")
    assert invoke("import", "--features", str(tmp_path / "f.npy"), "--collection", "ext", "--cache-dir",
                  cache).exit_code == 0
    return cache, tmp_path / "cache" / "collections" / "ext"


def test_shards_built_and_served_on_ray_answer_as_one_index(tmp_path):
    from served import local_client

    from stl10_similarity.index import build_index, last_params
    from stl10_similarity.server import create_app

    cache, home = _imported_collection(tmp_path, 2400, seed=21)
    assert invoke("index", "--collection", "ext", "--cache-dir", cache).exit_code == 0
    queries = [{"image_id": i, "k": 10, "method": m, "candidates": 50} for i in (0, 777, 2399) for m in
               ("rerank", "forest", "exact")]

    def answers(client) -> list[dict]:
        out = []
        for q in queries:
            doc = client.get("/api/v1/search", params=q).json()
            doc.pop("timing_ms")
            out.append(doc)
        return out

    with local_client(create_app(home)) as client:
        one = answers(client)
    out = invoke("index", "--shards", "3", "--engine", "ray", "--collection", "ext", "--cache-dir", cache)
    assert out.exit_code == 0 and "as 3 shards" in out.stdout, out.output
    ray_built = {p.name: p.read_bytes() for p in (home / "index" / "shard_001").glob("*.npy")}
    local = tmp_path / "local"
    shutil.copytree(home, local)
    build_index(local, last_params(local), shards=3, force=True)  # the same shards built in this process
    assert {p.name: p.read_bytes() for p in (local / "index" / "shard_001").glob("*.npy")} == ray_built
    session = Session.open(home, engine=EngineParams(engine="ray"))
    app = create_app(home, engine=EngineParams(engine="ray"))
    with local_client(app) as client:
        assert answers(client) == one  # the same JSON from one Ray actor per shard
        assert client.get("/api/v1/images/5").json()["id"] == 5
    # a shard's actor dies: Ray restarts it, and the question is asked again
    expected = session.query(image_id=777, k=10, method="rerank").results
    ray.kill(session.parts.actors[1], no_restart=False)
    assert session.query(image_id=777, k=10, method="rerank").results == expected
    session.parts.close()


def test_stl10sim_serve_engine_ray_answers_as_in_process(tmp_path):
    """The command itself, as a user runs it: its own process, its own local Ray, one actor per shard."""
    import os
    import signal
    import subprocess
    import urllib.request

    from served import free_port, local_client

    from stl10_similarity.server import create_app

    cache, home = _imported_collection(tmp_path, 1500, seed=23)
    assert invoke("index", "--shards", "2", "--collection", "ext", "--cache-dir", cache).exit_code == 0
    query = "/api/v1/search?image_id=321&k=8&method=rerank&candidates=40"
    with local_client(create_app(home)) as client:
        expected = client.get(query).json()
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local Ray, not this test process's
    proc = subprocess.Popen([sys.executable, "-m", "stl10_similarity", "serve", "--engine", "ray", "--port", str(port),
                             "--collection", "ext", "--cache-dir", cache], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{query}", timeout=10) as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.5)
        assert answer is not None, proc.stderr.read() if proc.poll() is not None else "no answer in 120 s"
        answer.pop("timing_ms"), expected.pop("timing_ms")
        assert answer == expected
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert "one per shard" in proc.stderr.read()
