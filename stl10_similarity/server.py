"""``stl10sim serve``: a JSON API (version 1) and a web page over :class:`Session`, the library's query path.

The server opens the collection once (hash checks once, building the index first if it is missing) and
answers from that snapshot until it is restarted: artifacts are memory-mapped and replaced by rename,
so re-indexing while it runs never mixes two indexes; ``/api/v1/health`` says when a newer one exists.

Hardening: request bodies are capped (413), at most ``max_concurrent`` requests are worked on at once
(503 beyond that, never an unbounded queue), uploads are decoded in memory with a pixel limit and never
written to disk, nothing from a request is unpickled or used as a path, and every error is a JSON body.
Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart): only ``stl10sim serve`` imports this module.
"""

from __future__ import annotations

import io
import json
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser

from . import __version__
from .artifacts import json_ready, manifest_digest
from .errors import InputError, ParameterError, Stl10SimError
from .params import METHODS, SearchParams, ServeParams
from .paths import features_dir, index_dir
from .progress import SILENT, Progress
from .session import Session

WEB = Path(__file__).parent / "web"
PAGE_LIMIT = 500  # most images one /api/v1/images page may list
MAX_K = 1000
MAX_CANDIDATES = 100_000
# Threads that run queries. A query is many small numpy calls that hold the GIL between them, so more threads
# than cores only thrash: on 2 cores, 16 clients got 155 requests/s with anyio's default 40 threads (docs/server.md).
# Re-checked with one exact scan at a time (13,000 images, 16 clients): 2 threads 196-199, 4 213-223, 8 183-206.
WORKER_THREADS = 4
Method = Literal[METHODS]  # type: ignore[valid-type]


def create_app(cache_dir: Path, params: ServeParams = ServeParams(), *, progress: Progress = SILENT) -> Any:
    """The ASGI app serving the collection in ``cache_dir`` (opened now: errors surface before serving)."""
    session = Session.open(cache_dir, progress=progress)
    loaded = {"index": manifest_digest(index_dir(cache_dir)), "features": manifest_digest(features_dir(cache_dir))}
    max_body = params.max_upload_mb * 2**20
    # uploads stay in memory: the body is capped below this, so the spooled file never rolls over to disk
    MultiPartParser.spool_max_size = max_body + 2**20
    embed_lock = threading.Lock()  # one model, one embedding at a time

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        yield

    app = FastAPI(title="stl10sim", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Image similarity search over the collection this server opened.")
    app.add_middleware(_Guard, max_body=max_body, max_concurrent=params.max_concurrent)

    def error(status: int, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": {"status": status, "message": message, **extra}}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")}
                   for e in exc.errors()]
        first = details[0] if details else {"where": "request", "problem": "invalid"}
        return error(422, f"{first['where']}: {first['problem']}", details=details)

    @app.exception_handler(Stl10SimError)
    async def library_error(request: Request, exc: Stl10SimError) -> JSONResponse:
        if isinstance(exc, ParameterError) and exc.param == "image_id":
            return error(404, exc.render())
        return error(400 if isinstance(exc, InputError) else 500, exc.render())

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error ({exc.__class__.__name__}); the server keeps running")

    # ------------------------------------------------------------ API

    @app.get("/api/v1/health")
    def health() -> dict[str, Any]:
        """The collection this server answers from, and whether a newer index or features exist on disk."""
        newer = {}
        for name, folder in (("index", index_dir(cache_dir)), ("features", features_dir(cache_dir))):
            try:
                newer[name] = manifest_digest(folder) != loaded[name]
            except OSError:
                newer[name] = True
        return json_ready({"status": "ok", "n": session.n, **session.index.params,
                           "weights": session.index.features_params.get("weights"),
                           "class_names": session.class_names, "version": __version__,
                           "newer_index_on_disk": newer["index"] or newer["features"],
                           "note": "restart the server to answer from the newer index"
                           if newer["index"] or newer["features"] else None})

    @app.get("/api/v1/images")
    def images(offset: int = Query(0, ge=0), limit: int = Query(60, ge=1, le=PAGE_LIMIT),
               label: str | None = Query(None, max_length=100)) -> dict[str, Any]:
        """A page of the collection, optionally only one class (a class name, or ``unlabeled``)."""
        labels = np.asarray(session.index.labels)
        if label is None:
            rows = np.arange(session.n)
        else:
            names = session.class_names
            if label == "unlabeled":
                wanted = -1
            elif label in names:
                wanted = names.index(label)
            else:
                raise HTTPException(400, f"unknown label {label!r}: choose one of {', '.join(names + ['unlabeled'])}")
            rows = np.flatnonzero(labels == wanted)
        page = session.index.ids_of(rows[offset : offset + limit])
        return {"total": int(len(rows)), "offset": offset, "limit": limit,
                "images": [session.describe_image(int(i)) for i in page]}

    @app.get("/api/v1/images/{image_id}")
    def image(image_id: int) -> dict[str, Any]:
        return session.describe_image(image_id)

    @app.get("/api/v1/images/{image_id}/image.png")
    def image_png(image_id: int, request: Request) -> Response:
        session.check_id(image_id)
        etag = f'"{loaded["features"][:16]}-{image_id}"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=86400"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(_png(session.images([image_id])[0]), media_type="image/png", headers=headers)

    @app.get("/api/v1/search")
    def search(image_id: int = Query(...), k: int = Query(SearchParams.k, ge=1, le=MAX_K),
               method: Method = Query(SearchParams.method),  # type: ignore[valid-type]
               candidates: int = Query(SearchParams.candidates, ge=1, le=MAX_CANDIDATES)) -> Response:
        """Exactly the document ``stl10sim query --image-id N --json`` prints for the same parameters."""
        result = session.query(image_id, k=k, method=method, candidates=candidates)
        return _json(result.to_dict())

    @app.post("/api/v1/search")
    def search_upload(image: UploadFile = File(...), k: int = Form(SearchParams.k, ge=1, le=MAX_K),
                      method: Method = Form(SearchParams.method),  # type: ignore[valid-type]
                      candidates: int = Form(SearchParams.candidates, ge=1, le=MAX_CANDIDATES)) -> Response:
        """The same document for an uploaded image (the model loads on first use)."""
        data = image.file.read()
        name = Path(image.filename or "upload").name[:200] or "upload"  # a label only, never a path we open
        with embed_lock:
            result = session.query(image=data, name=name, k=k, method=method, candidates=candidates)
        return _json(result.to_dict())

    # ------------------------------------------------------------ web page (every asset from the package)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: Literal["app.js", "style.css"]) -> FileResponse:  # a fixed list: no path from a request
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(WEB / name, media_type=kind)

    return app


def _json(doc: dict[str, Any]) -> Response:
    # the CLI's own serialisation, so the API's document equals `stl10sim query --json` byte for byte in shape
    return Response(json.dumps(json_ready(doc), separators=(", ", ": ")), media_type="application/json")


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buffer, format="PNG")
    return buffer.getvalue()


class _Guard:
    """ASGI middleware: caps request bodies (413) and requests in progress (503), answering in JSON."""

    def __init__(self, app: Any, max_body: int, max_concurrent: int) -> None:
        self.app = app
        self.max_body = max_body
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.max_concurrent = max_concurrent

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _reject(send, 413, f"request body over the {self.max_body // 2**20} MB limit")
            return
        if not self.slots.acquire(blocking=False):
            await _reject(send, 503, f"busy: {self.max_concurrent} requests in progress; retry shortly",
                          [(b"retry-after", b"1")])
            return
        try:
            if length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                # no Content-Length (a chunked body): read it here, within the cap, then hand it on
                body = await _read_capped(receive, self.max_body)
                if body is None:
                    await _reject(send, 413, f"request body over the {self.max_body // 2**20} MB limit")
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send)
        finally:
            self.slots.release()


async def _read_capped(receive: Any, cap: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
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
    body = json.dumps({"error": {"status": status, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def serve(cache_dir: Path, params: ServeParams = ServeParams(), *, progress: Progress = SILENT) -> None:
    """Open the collection and serve it with uvicorn until interrupted."""
    import uvicorn

    app = create_app(cache_dir, params, progress=progress)
    progress.note(f"serving {app.title} on http://{params.host}:{params.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=params.host, port=params.port, log_level="warning", access_log=False)
