"""`stl10sim serve` over real HTTP (uvicorn on 127.0.0.1, configured as the command runs it): what only the
HTTP layer shows. Lying and chunked bodies, stalled bodies and headers, idle connections, malformed requests."""

from __future__ import annotations

import json
import socket
import tempfile
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is part of the test extra")
from served import read_response, served  # noqa: E402

from stl10_similarity.server import create_app  # noqa: E402

TIMEOUT = 1  # seconds, for bodies and headers alike: short, so the tests are quick


@pytest.fixture(scope="module")
def server(built_cache):
    with served(lambda params: create_app(built_cache, params), max_upload_mb=1, max_concurrent=2,
                body_timeout=TIMEOUT, header_timeout=TIMEOUT) as (port, _):
        yield ("127.0.0.1", port)


def _connect(server) -> socket.socket:
    sock = socket.create_connection(server, timeout=10)
    return sock


_response = read_response


def _get(server, path: str) -> tuple[int, dict]:
    with _connect(server) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        status, _, body = _response(sock)
    return status, json.loads(body)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _error(status: int, headers: dict, body: bytes, expected: int) -> str:
    assert status == expected, body
    assert headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["error"]["status"] == expected
    return doc["error"]["message"]


def test_content_length_and_chunked_together_is_refused(server):
    sent = 0
    with _connect(server) as sock:
        sock.sendall(b"POST /api/v1/search HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n"
                     b"Transfer-Encoding: chunked\r\nContent-Type: multipart/form-data; boundary=x\r\n\r\n")
        try:
            for _ in range(1600):  # 100 MB: the server answers at once and closes, it never reads them
                sock.sendall(b"10000\r\n" + b"\0" * 0x10000 + b"\r\n")
                sent += 0x10000
        except (BrokenPipeError, ConnectionResetError):
            pass
        message = _error(*_response(sock), 400)
    assert "not both" in message and sent < 50 * 2**20
    assert _get(server, "/api/v1/health")[0] == 200


def test_a_chunked_body_over_the_cap_is_cut_at_413_and_never_touches_disk(server, monkeypatch, tmp_path):
    made = []
    for name in ("mkstemp", "NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile"):
        original = getattr(tempfile, name)
        monkeypatch.setattr(tempfile, name, lambda *a, _o=original, _n=name, **k: (made.append(_n), _o(*a, **k))[1])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    sent = 0
    with _connect(server) as sock:
        sock.sendall(b"POST /api/v1/search HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=x\r\n\r\n")
        try:
            for _ in range(100):  # up to 6.4 MB against a 1 MB cap; the server answers and closes long before
                sock.sendall(b"10000\r\n" + b"\0" * 0x10000 + b"\r\n")
                sent += 0x10000
        except (BrokenPipeError, ConnectionResetError):
            pass
        message = _error(*_response(sock), 413)
    assert "1 MB" in message and made == [] and list(tmp_path.iterdir()) == []


def test_stalled_bodies_get_408_and_never_take_the_slots_queries_need(server):
    stalled = []
    for _ in range(6):  # three times the server's 2 slots
        sock = _connect(server)
        sock.sendall(b"POST /api/v1/search HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n"
                     b"Content-Type: multipart/form-data; boundary=x\r\n\r\n0123456789")
        stalled.append(sock)
    try:
        started = time.monotonic()
        for _ in range(5):  # while they stall, health and id searches answer at once
            assert _get(server, "/api/v1/health")[0] == 200
            status, doc = _get(server, "/api/v1/search?image_id=3&k=2")
            assert status == 200 and len(doc["results"]) == 2
        assert time.monotonic() - started < TIMEOUT
        for sock in stalled:
            message = _error(*_response(sock), 408)
            assert f"within {TIMEOUT} s" in message
    finally:
        for sock in stalled:
            sock.close()


def test_a_connection_that_sends_nothing_is_closed(server):
    with _connect(server) as sock:
        started = time.monotonic()
        assert _closed_within(sock, TIMEOUT + 5)
        assert time.monotonic() - started < TIMEOUT + 2


def test_headers_trickled_byte_by_byte_are_cut_off(server):
    with _connect(server) as sock:
        started = time.monotonic()
        closed = False
        for byte in b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 200:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.1)
            if time.monotonic() - started > TIMEOUT + 3:
                break
        assert closed or _closed_within(sock, 1)
        assert time.monotonic() - started < TIMEOUT + 3


def test_a_keep_alive_connection_serves_several_requests_then_idles_out(server):
    with _connect(server) as sock:
        for _ in range(3):
            sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, _, _ = _response(sock)
            assert status == 200
        assert _closed_within(sock, TIMEOUT + 5)


@pytest.mark.parametrize("request_bytes", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20_000,  # 16 KB of headers and still no end
])
def test_malformed_http_gets_a_json_400(server, request_bytes):
    with _connect(server) as sock:
        sock.sendall(request_bytes)
        status, headers, body = _response(sock)
    message = _error(status, headers, body, 400)
    assert "malformed HTTP request" in message and headers["x-content-type-options"] == "nosniff"


def test_served_connections_send_small_writes_at_once():
    """A response is two writes (headers, body); with Nagle's algorithm on, a keep-alive response's body waited
    for the client's delayed ACK, 40 ms a request. The listening socket names TCP, so asyncio turns Nagle off on
    every connection it accepts."""
    import asyncio

    from served import free_port

    from stl10_similarity.server import listen

    listener = listen("127.0.0.1", free_port())
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            seen.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def accept_one() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()

    asyncio.run(accept_one())
    assert seen and seen[0] != 0  # TCP_NODELAY on the accepted connection
