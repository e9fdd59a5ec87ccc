"""Who may talk to `stl10sim serve` (docs/server.md, "Security"): the Host allow-list against DNS rebinding, the
token off loopback, same-origin uploads, and the server's own bounds on bodies and uploads. The rules as plain
functions first, then over real HTTP to uvicorn on 127.0.0.1 as `stl10sim serve` runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is part of the test extra")
from served import free_port, read_response, served  # noqa: E402

from stl10_similarity import Access  # noqa: E402
from stl10_similarity.errors import ParameterError  # noqa: E402
from stl10_similarity.params import ServeParams  # noqa: E402
from stl10_similarity.server import create_app  # noqa: E402

TOKEN = "a-test-token-of-32-characters-xx"


# ---------------------------------------------------------------- the rules


def test_a_loopback_server_answers_to_loopback_names_only():
    access = Access.for_server("127.0.0.1", 8000)
    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST:8000", "127.0.0.2", None):
        assert access.host_allowed(host), host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example:8000",
                 "10.0.0.5:8000", "", "local host", "[::1", "localhost:80x"):
        assert not access.host_allowed(host), host
    assert access.token is None  # loopback stays open (with these checks)


def test_allowed_hosts_and_the_address_served_on():
    proxied = Access.for_server("127.0.0.1", 8000, ("photos.example.org",))
    assert proxied.host_allowed("photos.example.org") and proxied.host_allowed("Photos.Example.org.:443")
    assert not proxied.host_allowed("other.example.org")
    lan = Access.for_server("192.168.7.9", 8000)
    assert lan.host_allowed("192.168.7.9:8000") and not lan.host_allowed("192.168.7.10:8000")
    everywhere = Access.for_server("0.0.0.0", 8000)
    assert everywhere.host_allowed("10.1.2.3:8000") and everywhere.host_allowed(socket.gethostname())
    assert not everywhere.host_allowed("evil.example")  # an IP can't be rebound, a name can
    with pytest.raises(ParameterError, match="allow_host"):
        Access.for_server("127.0.0.1", 8000, ("http://photos.example.org/",))


def test_off_loopback_a_token_is_made_unless_one_is_given():
    made = Access.for_server("0.0.0.0", 8000)
    again = Access.for_server("0.0.0.0", 8000)
    assert made.generated and len(made.token) >= 40 and made.token != again.token
    assert f"?token={made.token}" in made.url("0.0.0.0", 8000)
    given = Access.for_server("0.0.0.0", 8000, token=TOKEN)
    assert given.token == TOKEN and not given.generated and TOKEN not in given.url("0.0.0.0", 8000)
    assert Access.for_server("127.0.0.1", 8000, token=TOKEN).token == TOKEN  # asked for on loopback: required too
    with pytest.raises(ParameterError, match="token"):
        Access.for_server("127.0.0.1", 8000, token="short")


def test_the_token_is_checked_from_the_header_or_the_page_cookie():
    access = Access.for_server("127.0.0.1", 8123, token=TOKEN)
    assert access.token_ok(f"Bearer {TOKEN}", None) and access.token_ok(f"bearer  {TOKEN} ", None)
    assert access.token_ok(None, f"theme=dark; stl10sim-token-8123={TOKEN}")
    for authorization, cookie in ((None, None), ("Bearer nope", None), (f"Basic {TOKEN}", None), (TOKEN, None),
                                  (f"Bearer {TOKEN}x", None), (None, f"stl10sim-token-8000={TOKEN}"),
                                  (f"Bearer {TOKEN[:-1]}", f"stl10sim-token-8123={TOKEN}x")):
        assert not access.token_ok(authorization, cookie), (authorization, cookie)
    assert "HttpOnly" in access.set_cookie() and "SameSite=Strict" in access.set_cookie()


def test_costly_requests_only_from_the_page_itself_or_clients_without_an_origin():
    access = Access.for_server("127.0.0.1", 8000, ("photos.example.org",))
    assert access.origin_allowed("POST", None, "localhost:8000")  # curl, scripts
    assert access.origin_allowed("POST", "http://localhost:8000", "localhost:8000")
    assert access.origin_allowed("POST", "https://photos.example.org", "127.0.0.1:8000")  # through the proxy
    assert access.origin_allowed("GET", "http://evil.example", "localhost:8000")  # reads: the browser guards them
    for origin in ("http://evil.example", "null", "http://localhost:8001", "file://", "http://localhost:8000.evil"):
        assert not access.origin_allowed("POST", origin, "localhost:8000"), origin


# ---------------------------------------------------------------- over real HTTP


def _request(port: int, head: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    """Send one raw request (``head`` without the final blank line) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\nConnection: close\r\n\r\n" + body)
        return read_response(sock)


def _json_error(answer: tuple[int, dict, bytes], status: int) -> str:
    code, headers, body = answer
    assert code == status, body
    assert headers["content-type"].startswith("application/json")
    return json.loads(body)["error"]["message"]


ROUTES = ("/", "/static/app.js", "/api/v1/health", "/api/v1/images?limit=500", "/api/v1/images/0",
          "/api/v1/images/0/image.png", "/api/v1/search?image_id=0", "/favicon.ico", "/nothing")


@pytest.fixture(scope="module")
def open_server(built_cache):
    with served(lambda params: create_app(built_cache, params), allow_hosts=("photos.example.org",),
                max_upload_mb=1, max_buffered_mb=2, body_timeout=5) as (port, _):
        yield port


def test_a_rebound_host_name_gets_403_and_no_data_on_every_route(open_server):
    port = open_server
    for path in ROUTES:
        code, _, body = _request(port, f"GET {path} HTTP/1.1\r\nHost: evil.example:{port}")
        assert code == 403, (path, body)
        assert "host name" in json.loads(body)["error"]["message"]
        assert b"images" not in body and b"class" not in body and b"cat" not in body
    message = _json_error(_request(port, f"POST /api/v1/search HTTP/1.1\r\nHost: evil.example:{port}\r\n"
                                         "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 5",
                                   b"xxxxx"), 403)
    assert "--allow-host" in message
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "photos.example.org"):
        assert _request(port, f"GET /api/v1/images/0 HTTP/1.1\r\nHost: {host}")[0] == 200, host


def test_an_upload_from_another_site_is_refused_before_its_body_is_read(open_server):
    port = open_server
    for origin in ("http://evil.example", "null"):
        started = time.monotonic()
        # the body is announced but never sent: the answer can't wait for it
        message = _json_error(_request(port, f"POST /api/v1/search HTTP/1.1\r\nHost: localhost:{port}\r\n"
                                             f"Origin: {origin}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                                             "Content-Length: 500000"), 403)
        assert "another site" in message and time.monotonic() - started < 4
    # the page's own origin, and clients without one, get through to the form's own checks (422: no image)
    for extra in (f"Origin: http://localhost:{port}\r\n", ""):
        code, _, body = _request(port, f"POST /api/v1/search HTTP/1.1\r\nHost: localhost:{port}\r\n{extra}"
                                       "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 6",
                                 b"--x--\r\n"[:6])
        assert code in (400, 422), body


def test_bodies_held_at_once_are_bounded_whatever_the_number_of_connections(open_server):
    """2 MB for all bodies together, 1 MB each: a third slow 0.9 MB upload waits for nobody, it gets 503."""
    port = open_server
    held = []
    try:
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(f"POST /api/v1/search HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: 900000\r\n"
                         "Content-Type: multipart/form-data; boundary=x\r\n\r\n".encode() + b"0" * 1000)
            held.append(sock)
        time.sleep(0.3)
        third = _request(port, f"POST /api/v1/search HTTP/1.1\r\nHost: localhost:{port}\r\n"
                               "Content-Length: 900000\r\nContent-Type: multipart/form-data; boundary=x")
        code, headers, body = third
        assert code == 503 and headers["retry-after"] == "1" and "MB of request bodies" in body.decode()
        assert _request(port, f"GET /api/v1/health HTTP/1.1\r\nHost: localhost:{port}")[0] == 200
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)  # their shares are given back when they go
    code, _, _ = _request(port, f"POST /api/v1/search HTTP/1.1\r\nHost: localhost:{port}\r\n"
                                "Content-Length: 6\r\nContent-Type: multipart/form-data; boundary=x", b"--x--\r")
    assert code != 503


@pytest.fixture(scope="module")
def token_server(built_cache):
    with served(lambda params: create_app(built_cache, params), token=TOKEN) as (port, _):
        yield port


def test_with_a_token_every_route_needs_it(token_server):
    port = token_server
    for path in ROUTES:
        code, headers, body = _request(port, f"GET {path} HTTP/1.1\r\nHost: localhost:{port}")
        assert code == 401 and headers["www-authenticate"].startswith("Bearer"), (path, body)
        assert TOKEN.encode() not in body and b"images" not in body
        wrong = _request(port, f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer {TOKEN}x")
        assert wrong[0] == 401
    health = _request(port, f"GET /api/v1/health HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer {TOKEN}")
    assert health[0] == 200 and TOKEN.encode() not in health[2]
    upload = _request(port, f"POST /api/v1/search HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: 5\r\n"
                            "Content-Type: multipart/form-data; boundary=x", b"xxxxx")
    assert upload[0] == 401


def test_the_page_link_with_the_token_sets_a_strict_cookie_and_leaves_the_address_bar(token_server):
    port = token_server
    code, headers, _ = _request(port, f"GET /?q=4&token={TOKEN} HTTP/1.1\r\nHost: localhost:{port}")
    assert code == 303 and headers["location"] == "/?q=4"
    cookie = headers["set-cookie"]
    assert f"stl10sim-token-{port}={TOKEN}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = cookie.split(";")[0]
    for path in ("/", "/static/app.js", "/api/v1/images/0"):
        assert _request(port, f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nCookie: {jar}")[0] == 200, path
    assert _request(port, f"GET /?token=wrong HTTP/1.1\r\nHost: localhost:{port}")[0] == 401


def test_serve_on_the_network_prints_a_token_once_and_requires_it(built_cache):
    """`stl10sim serve --host 0.0.0.0` as its own process: the URL to open carries a token made for this run."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("STL10SIM_TOKEN", None)
    process = subprocess.Popen([sys.executable, "-m", "stl10_similarity", "serve", "--host", "0.0.0.0", "--port",
                                str(port), "--cache-dir", str(built_cache)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines, token = [], None
        deadline = time.monotonic() + 120
        while token is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(rf"http://[^/\s]+:{port}/\?token=([A-Za-z0-9_-]+)", line)
            token = found and found.group(1)
        assert token, "".join(lines)
        for _ in range(100):
            try:
                answer = _request(port, f"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1:{port}")
                break
            except ConnectionRefusedError:
                time.sleep(0.1)
        assert answer[0] == 401
        ok = _request(port, f"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}")
        assert ok[0] == 200
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=30)[0]
    assert token not in rest  # printed once
    assert sum(token in line for line in lines) == 1


def test_queued_uploads_never_take_the_slots_health_and_searches_need(built_cache):
    """Uploads wait for the one model in a lane of their own (``max_uploads``): with it full and more arriving,
    health and id searches still answer, and the extra uploads get 503 at once."""
    import asyncio

    import httpx2 as httpx

    from stl10_similarity.server import _Guard

    app = create_app(built_cache, ServeParams(max_concurrent=2))

    async def run() -> tuple[list[int], list[int]]:
        gate = asyncio.Event()

        async def slow_uploads(scope, receive, send):  # an upload waits (for the model) until released
            if scope["method"] == "POST":
                await gate.wait()
            await app(scope, receive, send)

        guarded = _Guard(slow_uploads, Access.for_server("127.0.0.1", 8000),
                         ServeParams(max_concurrent=2, max_uploads=3))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://localhost") as c:
            uploads = [asyncio.create_task(c.post("/api/v1/search", files={"image": ("x.png", b"x" * 100)}))
                       for _ in range(8)]
            await asyncio.sleep(0.2)
            probes = [(await c.get(path)).status_code for path in ("/api/v1/health", "/api/v1/search?image_id=3")
                      for _ in range(5)]
            gate.set()
            return probes, sorted([(await u).status_code for u in uploads])

    probes, uploads = asyncio.run(run())
    assert probes == [200] * 10
    assert uploads.count(503) == 5 and all(code in (400, 422) for code in uploads if code != 503)


@pytest.mark.slow
def test_out_of_descriptors_the_server_answers_again_and_its_log_stays_small(built_cache, tmp_path):
    """`stl10sim serve` under a low open-file limit, flooded with connections: the log says so in a few lines
    (not a traceback per request or per accept), and once the connections go, it answers again."""
    resource = pytest.importorskip("resource")
    port = free_port()
    limit = 48

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "stl10_similarity", "serve", "--port", str(port),
                                    "--cache-dir", str(built_cache)], stdout=out, stderr=subprocess.STDOUT,
                                   preexec_fn=low_limit)
    try:
        for _ in range(600):
            try:
                if _request(port, f"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1:{port}")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        flood = []
        for _ in range(3 * limit):
            try:
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        deadline = time.monotonic() + 4
        answers = []
        while time.monotonic() < deadline:  # requests while the server can't take more connections
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                sock.sendall(f"GET /api/v1/images/3/image.png HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
                answers.append(sock.recv(64)[:12])
                sock.close()
            except OSError:
                answers.append(b"no answer")
        for sock in flood:
            sock.close()
        time.sleep(1.5)
        after = _request(port, f"GET /api/v1/images/3/image.png HTTP/1.1\r\nHost: localhost:{port}")
        assert after[0] == 200
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    size = log.stat().st_size
    assert size < 8_000, log.read_text()[:3000]


def test_no_answer_names_a_folder_of_the_server_machine():
    from stl10_similarity.server import _without_paths

    said = ("the image folder /home/ana/photos/2024 the features came from is gone; see /var/cache/stl10sim/x.npy, "
            "not http://host/a/b or cat/img01.png")
    shown = _without_paths(said)
    assert "/home" not in shown and "/var" not in shown and "2024" in shown and "x.npy" in shown
    assert "http://host/a/b" in shown and "cat/img01.png" in shown


def test_the_page_has_a_favicon(built_cache):
    from served import local_client

    with local_client(create_app(built_cache, ServeParams())) as client:
        for path in ("/favicon.ico", "/static/favicon.svg"):
            answer = client.get(path)
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/svg+xml")
        assert 'rel="icon"' in client.get("/").text
