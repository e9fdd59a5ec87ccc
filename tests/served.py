"""A real `stl10sim serve` in a thread of the test process: uvicorn configured as the command runs it, on a free
port of 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from stl10_similarity.params import ServeParams


def free_port() -> int:
    """A port of 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(make_app: Callable[[ServeParams], Any], **options: Any) -> Iterator[tuple[int, Any]]:
    """Serve ``make_app(params)`` (params: ``ServeParams(**options)`` on a free port); yield the port and the app."""
    import uvicorn

    from stl10_similarity.server import uvicorn_config

    port = free_port()
    params = ServeParams(port=port, **options)
    app = make_app(params)
    server = uvicorn.Server(uvicorn_config(app, params))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    try:
        yield port, app
    finally:
        server.should_exit = True
        thread.join(10)


def local_client(app: Any, **options: Any) -> Any:
    """FastAPI's test client, sending ``Host: 127.0.0.1`` as a browser on this machine does (its own default,
    ``testserver``, is a host name the server does not answer to)."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1", **options)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response read off ``sock`` (up to the connection's close or the body's Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # the server closed on a body it won't read: what arrived first still counts
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        body += chunk
    return status, headers, body
