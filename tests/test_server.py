"""`stl10sim serve`'s API through the ASGI test client: every endpoint, every error, and CLI-vs-API equality."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import invoke

from stl10_similarity.cli import main
from stl10_similarity.params import ServeParams

fastapi = pytest.importorskip("fastapi", reason="the serve extra is part of the test extra")
from served import local_client  # noqa: E402

from stl10_similarity.server import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(built_cache):
    with local_client(create_app(built_cache, ServeParams(max_upload_mb=1, max_concurrent=4))) as c:
        yield c


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == status
    return body["error"]["message"]


def test_health(client):
    doc = client.get("/api/v1/health").json()
    assert doc["status"] == "ok" and doc["n"] == 100
    assert doc["top_k"] == 100 and doc["num_perm"] == 128 and doc["trees"] == 32 and doc["basis"] == "centered"
    assert doc["sets"] == "centroids" and doc["vocabulary"]["universe"] == 64
    assert doc["assignment"] == "int8 codes, 127 x 63 levels"
    assert doc["class_names"][:3] == ["airplane", "bird", "car"] and doc["newer_index_on_disk"] is False


@pytest.mark.slow
def test_the_server_loads_the_compiled_search_only_where_auto_means_rerank(built_cache):
    """Below the scan limit an exact scan answers by default: numba (~130 MB, ~0.4 s) is not loaded, and a rerank
    asked for by name still answers; past it the server loads the compiled rerank at start and says so."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, 'tests')\n"
        "from served import local_client\n"
        "from stl10_similarity.params import ServeParams\n"
        "from stl10_similarity.server import create_app\n"
        f"cache = Path({str(built_cache)!r})\n"
        "with local_client(create_app(cache, ServeParams())) as c:\n"
        "    assert c.get('/api/v1/health').json()['compiled_search'] is False\n"
        "    found = c.get('/api/v1/search', params={'image_id': 3, 'k': 5, 'method': 'rerank'}).json()\n"
        "    assert len(found['results']) == 5, found\n"
        "assert 'numba' not in sys.modules, 'a server over 100 images loaded numba'\n"
        "import stl10_similarity.search.searcher as searcher\n"
        "searcher.SCAN_LIMIT = 50  # 100 images are now past it: auto means rerank\n"
        "with local_client(create_app(cache, ServeParams())) as c:\n"
        "    assert c.get('/api/v1/health').json()['compiled_search'] is True\n"
        "assert 'numba' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_images_pages_and_filter(client):
    page = client.get("/api/v1/images", params={"offset": 10, "limit": 5}).json()
    assert page["total"] == 100 and page["offset"] == 10 and page["limit"] == 5
    assert [im["id"] for im in page["images"]] == [10, 11, 12, 13, 14]
    assert page["images"][0] == {"id": 10, "label": "airplane", "class_index": 0}
    cats = client.get("/api/v1/images", params={"label": "cat", "limit": 500}).json()
    assert cats["total"] == 10 and all(im["label"] == "cat" for im in cats["images"])
    assert client.get("/api/v1/images", params={"offset": 1000}).json()["images"] == []


def test_duplicates_are_listed_a_page_at_a_time_and_bad_asks_get_400(client):
    """STL-10's synthetic images: no files (no exact kind), the same groups as the CLI, paged."""
    whole = client.get("/api/v1/duplicates", params={"kind": "similar", "limit": 100}).json()
    assert whole["total"] == len(whole["groups"]) > 0
    assert all(g["kind"] == "similar" and g["paths"] is None and g["keep"] in g["ids"] for g in whole["groups"])
    second = client.get("/api/v1/duplicates", params={"kind": "similar", "offset": 1, "limit": 1}).json()
    assert second["total"] == whole["total"] and second["groups"] == whole["groups"][1:2]
    assert client.get("/api/v1/duplicates").json()["total"] >= 0
    for bad in ({"kind": "twins"}, {"limit": 101}, {"limit": 0}, {"offset": -1}):
        response = client.get("/api/v1/duplicates", params=bad)
        assert response.status_code in (400, 422) and "error" in response.json(), bad


def test_one_image_and_its_png(client, built_cache):
    assert client.get("/api/v1/images/3").json() == {"id": 3, "label": "cat", "class_index": 3}
    response = client.get("/api/v1/images/3/image.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert "max-age" in response.headers["cache-control"]
    from PIL import Image

    from stl10_similarity.sources import stl10

    with Image.open(io.BytesIO(response.content)) as img:
        pixels = np.asarray(img.convert("RGB"))
    expected = stl10.open_source(built_cache / "data", "train+test").images(3, 4)[0].transpose(1, 2, 0)
    assert np.array_equal(pixels, expected)
    again = client.get("/api/v1/images/3/image.png", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


@pytest.mark.parametrize("query", [{"image_id": 42}, {"image_id": 7, "k": 9, "method": "exact"},
                                   {"image_id": 0, "k": 3, "method": "forest", "candidates": 20},
                                   {"image_id": 99, "method": "forest-query"}])
def test_search_is_what_the_cli_prints(client, built_cache, query):
    api = client.get("/api/v1/search", params=query).json()
    args = ["query", "--image-id", str(query["image_id"]), "--json", "--cache-dir", str(built_cache)]
    for key in ("k", "method", "candidates"):
        if key in query:
            args += [f"-{key}" if key == "k" else f"--{key}", str(query[key])]
    cli = json.loads(invoke(*args).stdout)
    for doc in (api, cli):
        doc.pop("timing_ms")
    assert api == cli


def test_upload_search_matches_the_cli_image_query(client, built_cache, tmp_path):
    from stl10_similarity.sources import stl10

    pixels = stl10.open_source(built_cache / "data", "train+test").images(9, 10)[0].transpose(1, 2, 0)
    path = tmp_path / "nine.png"
    path.write_bytes(_png(np.ascontiguousarray(pixels)))
    response = client.post("/api/v1/search", files={"image": ("nine.png", path.read_bytes(), "image/png")},
                           data={"k": "4", "method": "exact"})
    assert response.status_code == 200, response.text
    api = response.json()
    assert api["query"]["image"] == "nine.png" and api["results"][0]["id"] == 9
    cli = json.loads(invoke("query", "--image", str(path), "-k", "4", "--method", "exact", "--json",
                            "--cache-dir", str(built_cache)).stdout)
    assert [m["id"] for m in api["results"]] == [m["id"] for m in cli["results"]]
    assert [m["cosine"] for m in api["results"]] == pytest.approx([m["cosine"] for m in cli["results"]], abs=1e-5)


def test_openapi_and_page_and_assets_are_served(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/v1/health", "/api/v1/images", "/api/v1/images/{image_id}", "/api/v1/images/{image_id}/image.png",
            "/api/v1/search"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "<script src=\"/static/app.js\">" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: every asset is ours
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
        assert "https://" not in asset.text
    _error(client.get("/docs"), 404)  # no Swagger UI: its default assets come from a CDN


# ---------------------------------------------------------------- every bad request: 4xx JSON, and the server goes on


def _bomb(width: int = 200_000, height: int = 200_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height``, with almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")


def _ico() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="ICO")  # Pillow reads it; we don't open it
    return buffer.getvalue()


def _upload(name: str, data: bytes, **form: str):
    return {"files": {"image": (name, data, "application/octet-stream")}, "data": form}


BAD = {
    "unknown path": ("get", "/api/v1/nothing", {}, 404),
    "wrong verb": ("delete", "/api/v1/health", {}, 405),
    "id past the end": ("get", "/api/v1/images/100", {}, 404),
    "negative id": ("get", "/api/v1/images/-1", {}, 404),
    "id not a number": ("get", "/api/v1/images/abc", {}, 422),
    "png of a missing id": ("get", "/api/v1/images/500/image.png", {}, 404),
    "unknown label": ("get", "/api/v1/images", {"params": {"label": "zebra"}}, 400),
    "limit 0": ("get", "/api/v1/images", {"params": {"limit": 0}}, 422),
    "limit too large": ("get", "/api/v1/images", {"params": {"limit": 100_000}}, 422),
    "negative offset": ("get", "/api/v1/images", {"params": {"offset": -5}}, 422),
    "search without id": ("get", "/api/v1/search", {}, 422),
    "search id out of range": ("get", "/api/v1/search", {"params": {"image_id": 100}}, 404),
    "search k 0": ("get", "/api/v1/search", {"params": {"image_id": 1, "k": 0}}, 422),
    "search k not a number": ("get", "/api/v1/search", {"params": {"image_id": 1, "k": "many"}}, 422),
    "search unknown method": ("get", "/api/v1/search", {"params": {"image_id": 1, "method": "fastest"}}, 422),
    "search candidates 0": ("get", "/api/v1/search", {"params": {"image_id": 1, "candidates": 0}}, 422),
    "upload missing": ("post", "/api/v1/search", {"data": {"k": "3"}}, 422),
    "upload empty": ("post", "/api/v1/search", _upload("e.png", b""), 400),
    "upload not an image": ("post", "/api/v1/search", _upload("x.png", b"just some text" * 10), 400),
    "upload truncated": ("post", "/api/v1/search", _upload("t.png", _png(np.zeros((40, 40, 3), np.uint8))[:60]), 400),
    "upload unsupported format": ("post", "/api/v1/search", _upload("a.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>"), 400),
    "upload bomb": ("post", "/api/v1/search", _upload("bomb.png", _bomb()), 413),
    "upload over the decoded-size limit": ("post", "/api/v1/search", _upload("big.png", _bomb(9000, 9000)), 413),
    "upload a thin strip": ("post", "/api/v1/search", _upload("thin.png", _png(np.zeros((1000, 1, 3), np.uint8))), 413),
    "upload a format outside the whitelist": ("post", "/api/v1/search", _upload("i.ico", _ico()), 400),
    "trailing slash": ("get", "/api/v1/health/", {}, 404),
    "upload bad k": ("post", "/api/v1/search", _upload("p.png", _png(np.zeros((8, 8, 3), np.uint8)), k="-1"), 422),
    "upload too large": ("post", "/api/v1/search", _upload("big.png", b"\0" * (2 * 2**20)), 413),
    "path traversal": ("get", "/static/..%2F..%2Fserver.py", {}, 404),
    "json where a form is expected": ("post", "/api/v1/search", {"json": {"image": "x"}}, 422),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_get_a_json_4xx_and_the_server_goes_on(client, case):
    verb, path, kwargs, status = BAD[case]
    message = _error(getattr(client, verb)(path, **kwargs), status)
    assert message and "Traceback" not in message
    assert client.get("/api/v1/health").status_code == 200


def test_chunked_upload_over_the_limit_is_refused(client):
    def body():
        for _ in range(40):
            yield b"\0" * 65536

    response = client.post("/api/v1/search", content=body(), headers={"content-type": "multipart/form-data; boundary=x"})
    _error(response, 413)


def test_uploads_are_never_written_to_disk(client, monkeypatch, built_cache):
    """Starlette spools large uploads to a temporary file; ours stay in memory (and nothing is written anywhere)."""
    def no_files(*args, **kwargs):
        raise AssertionError("a temporary file was created for an upload")

    app = create_app(built_cache, ServeParams(max_upload_mb=4))  # opening may refresh the cache's stamps file
    monkeypatch.setattr(tempfile, "mkstemp", no_files)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_files)
    monkeypatch.setattr(tempfile, "TemporaryFile", no_files)
    rng = np.random.default_rng(0)
    noisy = _png(rng.integers(0, 255, (700, 700, 3), dtype=np.uint8))  # ~1.4 MB: over Starlette's 1 MB spool
    assert len(noisy) > 2**20
    with local_client(app) as big:
        response = big.post("/api/v1/search", files={"image": ("n.png", noisy, "image/png")}, data={"k": "2"})
    assert response.status_code == 200, response.text


def test_a_full_server_answers_503_at_once(built_cache):
    import asyncio

    import httpx2 as httpx

    app = create_app(built_cache, ServeParams(max_concurrent=1))

    async def run() -> list[int]:
        gate = asyncio.Event()
        slow_started = asyncio.Event()

        async def slow_app(scope, receive, send):  # holds the only slot until released
            slow_started.set()
            await gate.wait()
            await app(scope, receive, send)

        from stl10_similarity import Access
        from stl10_similarity.server import _Guard

        guarded = _Guard(slow_app, Access.for_server("127.0.0.1", 8000), ServeParams(max_concurrent=1))
        transport = httpx.ASGITransport(app=guarded)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            first = asyncio.create_task(c.get("/api/v1/health"))
            await slow_started.wait()
            second = await c.get("/api/v1/health")
            gate.set()
            return [(await first).status_code, second.status_code, second.headers.get("retry-after")]

    first, second, retry = asyncio.run(run())
    assert (first, second, retry) == (200, 503, "1")


def test_reindexing_while_serving_keeps_the_loaded_answers(cache):
    with local_client(create_app(cache, ServeParams())) as c:
        before = c.get("/api/v1/search", params={"image_id": 5, "k": 5}).json()
        assert invoke("-q", "index", "--top-k", "40", "--force", "--cache-dir", str(cache)).exit_code == 0
        health = c.get("/api/v1/health").json()
        after = c.get("/api/v1/search", params={"image_id": 5, "k": 5}).json()
    assert health["newer_index_on_disk"] is True and health["top_k"] == 100
    assert after["results"] == before["results"] and after["params"]["top_k"] == 100
    with local_client(create_app(cache, ServeParams())) as restarted:
        assert restarted.get("/api/v1/search", params={"image_id": 5}).json()["params"]["top_k"] == 40


def test_every_response_carries_security_headers(client):
    for path in ("/", "/static/app.js", "/api/v1/health", "/api/v1/images/0/image.png", "/api/v1/nothing"):
        response = client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["x-frame-options"] == "DENY" and response.headers["referrer-policy"] == "no-referrer"
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
    assert "onsubmit" not in client.get("/").text  # no inline script: the policy would block it


def test_no_redirect_is_built_from_the_host_header(client):
    response = client.get("/api/v1/images/", headers={"host": "localhost:8000"}, follow_redirects=False)
    assert response.status_code == 404 and "location" not in response.headers


@pytest.mark.parametrize("damage", ["truncate", "rewrite in place"])
def test_a_mapped_artifact_changed_under_the_server_gets_503_not_a_crash(cache, damage):
    """Truncating a memory-mapped file kills a process that touches it (SIGBUS): with --artifacts map the
    server checks first."""
    features = cache / "features" / "features.npy"
    with local_client(create_app(cache, ServeParams(artifacts="map"))) as c:
        assert c.get("/api/v1/search", params={"image_id": 3}).status_code == 200
        if damage == "truncate":
            import os

            os.truncate(features, features.stat().st_size // 3)
        else:  # cp over it: same size, same file, other bytes (and a new mtime)
            import time

            time.sleep(0.01)
            data = bytearray(features.read_bytes())
            data[-64:] = bytes(64)
            with open(features, "r+b") as handle:
                handle.write(data)
        for path, params in (("/api/v1/search", {"image_id": 3}), ("/api/v1/health", {}), ("/api/v1/images", {})):
            message = _error(c.get(path, params=params), 503)
            assert "features.npy" in message and "restart" in message
        assert c.get("/").status_code == 200  # the page still loads, and says what the API says


def test_serve_refuses_bad_options(cache):
    for args in (["--port", "0"], ["--port", "70000"], ["--max-upload-mb", "0"], ["--max-concurrent", "0"],
                 ["--body-timeout", "0"], ["--header-timeout", "0"]):
        result = CliRunner().invoke(main, ["serve", *args, "--cache-dir", str(cache)])
        assert result.exit_code == 2, args


def test_serve_without_features_says_extract(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--cache-dir", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "run `stl10sim extract` first" in result.stderr


def test_by_default_the_server_answers_from_its_own_copy_whatever_happens_to_the_files(cache):
    """The default (--artifacts copy) reads the artifacts into memory: truncating them in place under exact scans
    can't kill the server (SIGBUS), and it keeps answering what it answered."""
    import os

    with local_client(create_app(cache, ServeParams())) as c:
        before = c.get("/api/v1/search", params={"image_id": 3, "method": "exact"}).json()
        for path in sorted((cache / "features").glob("*.npy")) + sorted((cache / "index").glob("*.npy")):
            os.truncate(path, 0)
        after = c.get("/api/v1/search", params={"image_id": 3, "method": "exact"}).json()
        rerank = c.get("/api/v1/search", params={"image_id": 3, "method": "rerank"})
    assert after["results"] == before["results"] and rerank.status_code == 200
