"""``stl10sim serve``: a JSON API (version 1) and a web page over :class:`Session`, the library's query path.

The server opens the collection once (hash checks once, building the index first if it is missing) and
answers from that snapshot until it is restarted: artifacts are memory-mapped and replaced by rename,
so re-indexing while it runs never mixes two indexes; ``/api/v1/health`` says when a newer one exists.

Hardening (docs/server.md, "Security"): request bodies are counted as they arrive, whatever the headers say,
and cut at the cap (413); a body must arrive within ``body_timeout`` (408) and a request's headers within
``header_timeout`` (the connection is closed); bodies are read before a request takes one of the
``max_concurrent`` slots (503 beyond that, never an unbounded queue), so stalled uploads can't starve queries;
uploads are decoded in memory by the one image decoder (images.py) and never written to disk; nothing from a
request is unpickled or used as a path; an artifact changed in place under the server gets 503, not a crash;
every response carries security headers and every error is a JSON body, uvicorn's own 400s included.
Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart): only ``stl10sim serve`` imports this module.
"""

from __future__ import annotations

import errno
import io
import logging
import re
import socket
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser

from stl10_similarity import (
    Access,
    ImageTooLarge,
    Session,
    __version__,
    features_digest,
    index_digest,
    json_ready,
    json_text,
)
from stl10_similarity import params as P
from stl10_similarity.errors import ImageGoneError, InputError, NoImagesError, ParameterError, Stl10SimError
from stl10_similarity.params import DUPLICATE_KINDS, METHODS, DuplicatesParams, EngineParams, SearchParams, ServeParams
from stl10_similarity.progress import SILENT, Progress

WEB = Path(__file__).parent / "web"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# an absolute path in a message: a "/" not inside a word or a URL, then path characters
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s'\"`,;()/]+/)*([^\s'\"`,;()/]+)")
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this (uvicorn's default, stated here)
# Threads that run queries. A query is many small numpy calls that hold the GIL between them, so more threads
# than cores only thrash: on 2 cores, 16 clients got 155 requests/s with anyio's default 40 threads (docs/server.md).
# Re-checked with one exact scan at a time (13,000 images, 16 clients): 2 threads 196-199, 4 213-223, 8 183-206.
WORKER_THREADS = 4
# The page's own files only: no inline script, no other origin, never framed.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"content-security-policy", CSP.encode()),
                    (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-resource-policy", b"same-origin")]
CLOSE = [(b"connection", b"close")]  # on answers to a request whose body is not read: no other request may follow
Method = Literal[METHODS]  # type: ignore[valid-type]
Kind = Literal[DUPLICATE_KINDS]  # type: ignore[valid-type]


def create_app(home: Path, params: ServeParams = ServeParams(), *, progress: Progress = SILENT,
               engine: EngineParams = EngineParams(), access: Access | None = None) -> Any:
    """The ASGI app serving the collection in ``home`` (opened now: errors surface before serving);
    ``engine`` ray: each shard is searched by a Ray actor (the API and the page are the same); ``access``: who
    may ask (default: the rules ``params`` give, a token made here when it listens off loopback)."""
    access = access or Access.for_server(params.host, params.port, params.allow_hosts, params.token)
    session = Session.open(home, progress=progress, engine=engine, mapped=params.artifacts == "map")
    session.pin()
    # a server answers many queries of the default method: compiled where that is rerank. Below the scan limit it
    # is an exact scan, and a rerank asked for by name takes the numpy path, about a millisecond at that size
    session.prepare_compiled()
    loaded = {"index": index_digest(home), "features": features_digest(home)}
    # uploads stay in memory: the body is capped below this, so the spooled file never rolls over to disk
    MultiPartParser.spool_max_size = params.max_upload_bytes + 2**20
    embedding: dict[str, Any] = {}  # one model, one embedding at a time: a limiter made in the event loop

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        yield

    app = FastAPI(title="stl10sim", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Image similarity search over the collection this server opened.",
                  redirect_slashes=False)  # its redirects are built from the Host header; a 404 is plainer
    app.add_middleware(_Guard, access=access, params=params, changed=session.changed_on_disk)

    def error(status: int, message: str, **extra: Any) -> Response:
        return Response(_error_body(status, message, **extra), status_code=status, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        details = [{"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")}
                   for e in exc.errors()]
        first = details[0] if details else {"where": "request", "problem": "invalid"}
        return error(422, f"{first['where']}: {first['problem']}", details=details)

    @app.exception_handler(Stl10SimError)
    async def library_error(request: Request, exc: Stl10SimError) -> Response:
        message = _without_paths(exc.render())  # the server machine's folders are nobody else's business
        if isinstance(exc, ParameterError) and exc.param == "image_id":
            return error(404, message)
        if isinstance(exc, ImageGoneError):
            return error(410, message)
        if isinstance(exc, NoImagesError):
            return error(404, message)
        if isinstance(exc, ImageTooLarge):
            return error(413, message)
        return error(400 if isinstance(exc, InputError) else 500, message)

    @app.exception_handler(OSError)
    async def system_error(request: Request, exc: OSError) -> Response:
        # handled here, not re-raised: uvicorn would log a traceback per request, and out of descriptors that is
        # every request (55 MB of log in 20 s); one line per kind of error a minute instead
        _LOG_ONCE.warn(f"{exc.__class__.__name__} [errno {exc.errno}]: {exc.strerror}")
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
            return Response(_error_body(503, "the server is out of resources (open files or memory); retry shortly"),
                            status_code=503, media_type="application/json", headers={"Retry-After": "1"})
        return error(500, f"internal error ({exc.__class__.__name__}: {exc.strerror}); the server keeps running")

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:
        return error(500, f"internal error ({exc.__class__.__name__}); the server keeps running")

    # ------------------------------------------------------------ API

    @app.get("/api/v1/health")
    def health() -> dict[str, Any]:
        """The collection this server answers from, and whether a newer index or features exist on disk."""
        newer = {}
        for name, digest in (("index", index_digest), ("features", features_digest)):
            try:
                newer[name] = digest(home) != loaded[name]
            except OSError:
                newer[name] = True
        return json_ready({"status": "ok", "n": session.n, **session.index_params(),
                           "weights": session.weights(), "compiled_search": session.searcher().uses_compiled,
                           "class_names": session.class_names, "version": __version__, "max_k": P.SERVE_MAX_K,
                           "newer_index_on_disk": newer["index"] or newer["features"],
                           "note": "restart the server to answer from the newer index"
                           if newer["index"] or newer["features"] else None})

    @app.get("/api/v1/images")
    def images(offset: int = Query(0, ge=0), limit: int = Query(60, ge=1, le=P.SERVE_PAGE_LIMIT),
               label: str | None = Query(None, max_length=100)) -> dict[str, Any]:
        """A page of the collection, optionally only one class (a class name, or ``unlabeled``)."""
        total, page = session.images_page(offset, limit, label)  # an unknown label: 400, as any bad parameter
        return {"total": total, "offset": offset, "limit": limit, "images": page}

    found_groups: dict[tuple[str, ...], list[Any]] = {}  # the groups of each kind, found on the first ask
    finding = threading.Lock()  # one search for groups at a time: concurrent first asks wait for the one

    @app.get("/api/v1/duplicates")
    def duplicates(kind: Kind | None = Query(None), offset: int = Query(0, ge=0),
                   limit: int = Query(20, ge=1, le=P.SERVE_GROUP_PAGE_LIMIT)) -> Response:
        """A page of the groups ``stl10sim duplicates --json`` lists with its defaults (exact and near), or of
        one kind; found on the first ask (seconds at 10,000 images), then kept."""
        kinds = (kind,) if kind else DuplicatesParams.kinds
        with finding:
            if kinds not in found_groups:
                found_groups[kinds] = session.duplicates(DuplicatesParams(kinds=kinds))
        groups = found_groups[kinds]
        return _json({"total": len(groups), "offset": offset, "limit": limit,
                      "groups": [g.as_json() for g in groups[offset : offset + limit]]})

    @app.get("/api/v1/images/{image_id}")
    def image(image_id: int) -> dict[str, Any]:
        return session.describe_image(image_id)

    @app.get("/api/v1/images/{image_id}/image.png")
    def image_png(image_id: int, request: Request) -> Response:
        """The image as it was indexed (410 when its file changed or vanished since); the ETag follows its file."""
        pixels, tag = session.indexed_image(image_id)
        etag = f'"{tag}"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=86400"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(_png(pixels), media_type="image/png", headers=headers)

    @app.get("/api/v1/search")
    def search(image_id: int = Query(...), k: int = Query(SearchParams.k, ge=1, le=P.SERVE_MAX_K),
               method: Method = Query(SearchParams.method),
               candidates: int = Query(SearchParams.candidates, ge=1, le=P.SERVE_MAX_CANDIDATES)) -> Response:
        """Exactly the document ``stl10sim query --image-id N --json`` prints for the same parameters."""
        result = session.query(image_id, k=k, method=method, candidates=candidates)
        return _json(result.to_dict())

    @app.post("/api/v1/search")
    async def search_upload(image: UploadFile = File(...), k: int = Form(SearchParams.k, ge=1, le=P.SERVE_MAX_K),
                            method: Method = Form(SearchParams.method),
                            candidates: int = Form(SearchParams.candidates, ge=1, le=P.SERVE_MAX_CANDIDATES)) -> Response:
        """The same document for an uploaded image (the model loads on first use)."""
        import anyio.to_thread

        data = await image.read()
        name = Path(image.filename or "upload").name[:200] or "upload"  # a label only, never a path we open
        if "limiter" not in embedding:
            embedding["limiter"] = anyio.CapacityLimiter(1)
        # uploads wait for the model here, in the event loop, not in the worker threads id searches need
        result = await anyio.to_thread.run_sync(
            lambda: session.query(image=data, name=name, k=k, method=method, candidates=candidates),
            limiter=embedding["limiter"])
        return _json(result.to_dict())

    # ------------------------------------------------------------ web page (every asset from the package)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: Literal["app.js", "style.css", "favicon.svg"]) -> FileResponse:  # a fixed list: no path from a request
        return FileResponse(WEB / name, media_type=STATIC_TYPES[Path(name).suffix])

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:  # where browsers look without the page's link
        return FileResponse(WEB / "favicon.svg", media_type=STATIC_TYPES[".svg"])

    return app


def _without_paths(message: str) -> str:
    """``message`` with each absolute path cut to its last part: an HTTP answer never shows the server's folders
    (a folder collection's own paths are relative to it, and stay whole)."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1), message)


_NUMBERS = re.compile(r"0x[0-9a-f]+|\d+(?:\.\d+)?")


class _OncePerMinute:
    """Log a warning at most once a minute per distinct message: errors that repeat on every request or every
    accept (out of descriptors) say so once, not thousands of times."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0) -> None:
        self.logger, self.every_s = logger, every_s
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()

    def due(self, message: str) -> bool:
        message = _NUMBERS.sub("#", message)  # the same error with other addresses, descriptors or times: one kind
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(message, -self.every_s) < self.every_s:
                return False
            self.last[message] = now
            if len(self.last) > 1000:  # bounded, whatever the variety of messages
                self.last.clear()
        return True

    def warn(self, message: str) -> None:
        if self.due(message):
            self.logger.warning("%s (said once a minute)", message)

    def filter(self, record: logging.LogRecord) -> bool:
        """As a logging filter (asyncio's accept errors): the first of each message a minute passes, without
        its traceback."""
        if record.levelno < logging.WARNING:
            return True
        if not self.due(record.getMessage()):
            return False
        record.exc_info, record.exc_text = None, None
        return True


_LOG_ONCE = _OncePerMinute(logging.getLogger("stl10sim.serve"))


def _json(doc: dict[str, Any]) -> Response:
    # the CLI's own serialisation, so the API's document equals `stl10sim query --json` byte for byte in shape
    return Response(json_text(doc), media_type="application/json")


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buffer, format="PNG")
    return buffer.getvalue()


class _Guard:
    """ASGI middleware, in the order it checks (docs/server.md, "Security"): the Host names this server, the token
    (off loopback), a costly request's Origin, the body's declared size; then bodies counted as they arrive,
    capped per request (413) and all together (503), timed out (408); uploads in their own bounded queue and
    other requests in ``max_concurrent`` slots (503 beyond); a collection changed on disk refused (503). Security
    headers on every response, every answer in JSON."""

    def __init__(self, app: Any, access: Access, params: ServeParams, changed: Any = lambda: None) -> None:
        self.app = app
        self.access = access
        self.max_body = params.max_upload_bytes
        self.max_buffered = params.max_buffered_bytes
        self.buffered = 0  # bytes of request bodies held now; the guard runs in the event loop, so a plain int
        self.slots = threading.BoundedSemaphore(params.max_concurrent)
        self.max_concurrent = params.max_concurrent
        self.uploads = threading.BoundedSemaphore(params.max_uploads)
        self.max_uploads = params.max_uploads
        self.body_timeout = params.body_timeout
        self.changed = changed

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send)
        headers = scope.get("headers") or []
        lengths = {value for name, value in headers if name == b"content-length"}
        chunked = any(name == b"transfer-encoding" for name, _ in headers)
        refused = self._refused(scope, _header(headers, b"host"))
        if refused is not None:
            await _reject(send, *refused)
            return
        too_large = f"request body over the {self.max_body // 2**20} MB limit"
        if lengths and chunked:  # the two disagree on where the body ends: the classic request-smuggling setup
            await _reject(send, 400, "a request may carry Content-Length or Transfer-Encoding, not both", CLOSE)
            return
        if len(lengths) > 1 or not all(value.isdigit() for value in lengths):
            await _reject(send, 400, "the request's Content-Length is not one whole number", CLOSE)
            return
        length = int(lengths.pop()) if lengths else None
        if length is not None and length > self.max_body:
            await _reject(send, 413, too_large, CLOSE)
            return
        if scope.get("path", "").startswith("/api/"):
            changed = self.changed()
            if changed:
                await _reject(send, 503, f"the collection changed on disk under the server ({Path(changed).name} "
                                         "was truncated or rewritten in place): restart stl10sim serve")
                return
        has_body = chunked or (length is not None and length > 0)
        held = (self.max_body if length is None else length) if has_body else 0  # a chunked body may grow to the cap
        if self.buffered + held > self.max_buffered:
            await _reject(send, 503, f"busy: {self.max_buffered // 2**20} MB of request bodies held; retry shortly",
                          [(b"retry-after", b"1"), *CLOSE])
            return
        self.buffered += held
        try:
            if has_body:  # read before the request takes a slot: a stalled body holds only its share of memory
                import anyio

                try:  # the whole body, counted as it arrives (h11 never delivers more than a Content-Length says)
                    with anyio.fail_after(self.body_timeout):
                        body = await _read_capped(receive, self.max_body)
                except TimeoutError:
                    await _reject(send, 408, f"the request body did not arrive within {self.body_timeout:g} s",
                                  CLOSE)
                    return
                except _Disconnected:
                    return
                if body is None:
                    await _reject(send, 413, too_large, CLOSE)
                    return
                receive = _replay(body, receive)
            # uploads queue for the one model in a lane of their own: they never hold the slots id searches need
            lane, busy = (self.uploads, f"busy: {self.max_uploads} uploads queued for the model; retry shortly") \
                if has_body else (self.slots, f"busy: {self.max_concurrent} requests in progress; retry shortly")
            if not lane.acquire(blocking=False):
                await _reject(send, 503, busy, [(b"retry-after", b"1")])
                return
            try:
                await self.app(scope, receive, send)
            finally:
                lane.release()
        finally:
            self.buffered -= held

    def _refused(self, scope: dict, host: str | None) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """Why the request is refused before anything else (status, message, headers), or None. No answer
        here carries data of the collection."""
        access, headers = self.access, scope.get("headers") or []
        if not access.host_allowed(host):
            return 403, ("this server does not answer to the host name the request was sent to (a web page may "
                         "have re-pointed its name at this machine); a reverse proxy's name is allowed with "
                         "stl10sim serve --allow-host NAME"), CLOSE
        method = scope.get("method", "GET")
        if access.token is not None and not access.token_ok(_header(headers, b"authorization"),
                                                            _header(headers, b"cookie")):
            link = access.page_link(scope.get("query_string", b"").decode("latin-1")) \
                if scope.get("path") == "/" and method == "GET" else None
            if link is not None:  # the page's link: keep the token in a cookie, and take it out of the address bar
                return 303, "", [(b"location", link.encode()), (b"set-cookie", access.set_cookie().encode()),
                                 (b"cache-control", b"no-store")]
            return 401, ("this server needs its token: open the address stl10sim serve printed (it ends in "
                         "?token=...), or send the header Authorization: Bearer TOKEN"), \
                [(b"www-authenticate", b'Bearer realm="stl10sim"'), *CLOSE]
        if not access.origin_allowed(method, _header(headers, b"origin"), host):
            return 403, ("requests that change or cost something are not taken from another site's page: send them "
                         "from this server's own page, or without an Origin header (curl, scripts)"), CLOSE
        return None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """A request header's value (the first, if repeated), or None."""
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class _Disconnected(Exception):
    """The client went away while sending its body."""


def _with_security_headers(send: Any) -> Any:
    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
        await send(message)

    return sending


async def _read_capped(receive: Any, cap: int) -> bytes | None:
    """The request body, or None as soon as it passes ``cap`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        size += len(message.get("body", b""))
        if size > cap:
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """A receive that gives the app the body read already, then whatever the client does next."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _reject(send: Any, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = _error_body(status, message) if message else b""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def _error_body(status: int, message: str, **extra: Any) -> bytes:
    """Every error the server sends, from a route or from below the app: the API's one JSON rendering."""
    return json_text({"error": {"status": status, "message": message, **extra}}).encode()


def http_protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol, plus: a request's headers must arrive within ``header_timeout`` seconds (else the
    connection is closed: a client that sends nothing, or trickles its headers, can't hold a connection), and
    the 400 it sends for malformed HTTP is our JSON error body rather than plain text."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _deadline: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the request's headers are in: the body has its own timeout
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers are due in time too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            body = _error_body(400, f"malformed HTTP request ({msg.rstrip('.').lower()})")
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       *CLOSE, *SECURITY_HEADERS]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return Protocol


def uvicorn_config(app: Any, params: ServeParams) -> Any:
    """How ``stl10sim serve`` runs uvicorn: our h11 protocol (header deadline, JSON 400s), quiet logs."""
    import uvicorn

    accept_errors = logging.getLogger("asyncio")  # out of descriptors, asyncio logs each failed accept with a traceback
    if _LOG_ONCE not in accept_errors.filters:
        accept_errors.addFilter(_LOG_ONCE)
    return uvicorn.Config(app, host=params.host, port=params.port, log_level="warning", access_log=False,
                          http=http_protocol(params.header_timeout), timeout_keep_alive=KEEP_ALIVE_S)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, made before the collection is opened: a busy port is said at once.

    Raises:
        InputError: the port is in use or needs privileges, or ``host`` is not an address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP, and
    # with Nagle on, a keep-alive response's body waited ~40 ms for the client's delayed ACK of its headers
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse a TIME_WAIT port
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        other = f"choose another with {{port}} {port + 1 if port < 65535 else 8000}"
        if exc.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {host} is in use (another server, or another stl10sim serve?): "
                             f"{other}", options=("port",)) from exc
        if exc.errno == errno.EACCES:
            raise InputError(f"no permission to listen on port {port} (ports below 1024 need root): {other}",
                             options=("port",)) from exc
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): give {{host}} an address of this "
                         "machine, such as 127.0.0.1 or 0.0.0.0", options=("host",)) from exc
    return sock


def serve(home: Path, params: ServeParams = ServeParams(), *, progress: Progress = SILENT,
          engine: EngineParams = EngineParams()) -> None:
    """Open the collection and serve it with uvicorn until interrupted."""
    import uvicorn

    _raise_descriptor_limit()
    access = Access.for_server(params.host, params.port, params.allow_hosts, params.token)
    sock = listen(params.host, params.port)
    try:
        app = create_app(home, params, progress=progress, engine=engine, access=access)
        if access.generated:  # printed once, here, and nowhere else (never logged, never in JSON)
            progress.note(f"serving {app.title} to the network with a token made for this run (Ctrl-C stops); open")
            progress.note(f"    {access.url(params.host, params.port)}")
        else:
            needs = " (every request needs the token)" if access.token else ""
            progress.note(f"serving {app.title} on {access.url(params.host, params.port)}{needs} (Ctrl-C stops)")
        uvicorn.Server(uvicorn_config(app, params)).run(sockets=[sock])
    finally:
        sock.close()


def _raise_descriptor_limit() -> None:
    """Raise this process's open-file limit to its hard limit: each connection costs a descriptor."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass  # not on this platform, or not allowed: the limit stays, and running out is answered 503
