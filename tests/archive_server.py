"""A local HTTP server for download tests: serves one archive with Range support, and can misbehave.

It never touches the internet: it listens on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import http.server
import re
import threading
from dataclasses import dataclass, field


@dataclass
class Request:
    range: str | None
    status: int = 0
    sent: int = 0


@dataclass
class ArchiveServer:
    """``payloads[i]`` answers the i-th request (the last one repeats); see the flags for misbehaviour."""

    payloads: list[bytes]
    ranges: bool = True  # False: ignore Range headers and always send the whole file (200)
    fail_first: int = 0  # answer this many requests with 503 first
    stall_after: int | None = None  # first request: send this many bytes, then hang until release is set
    requests: list[Request] = field(default_factory=list)
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> ArchiveServer:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                record = Request(self.headers.get("Range"))
                server.requests.append(record)
                if server.fail_first > 0:
                    server.fail_first -= 1
                    record.status = 503
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.payloads[min(len(server.requests), len(server.payloads)) - 1]
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", record.range or "")
                if server.ranges and match:
                    start = int(match.group(1))
                    if start >= len(body):
                        record.status = 416
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    record.status = 206
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    record.status = 200
                    self.send_response(200)
                    self.send_header("Accept-Ranges", "bytes" if server.ranges else "none")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                data = body[start:]
                if server.stall_after is not None and len(server.requests) == 1:
                    self.wfile.write(data[: server.stall_after])
                    self.wfile.flush()
                    record.sent = server.stall_after
                    server.stalled.set()
                    server.release.wait(120)
                    self.close_connection = True
                    return
                self.wfile.write(data)
                record.sent = len(data)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/stl10_binary.tar.gz"

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
