"""Fetching a large file over HTTP(S): resumable, retried, with progress.

The file grows in ``<name>.part`` beside its destination and is flushed as it arrives, so a run that
is killed or loses the network keeps what it has: the next run asks the server for the rest with an
HTTP Range request (and starts over only when the server ignores Range). Transient failures
(refused or reset connections, timeouts, HTTP 5xx and 429) are retried with back-off.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from stl10_similarity.errors import EnvironmentFailure
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.store.artifacts import environment_failure

RETRY_DELAYS = (1.0, 3.0, 9.0)  # seconds before each retry; then we give up
TIMEOUT = 30.0  # seconds without a byte before a connection counts as broken
BLOCK = 1 << 16
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class Transient(Exception):
    """A failure worth retrying: the next attempt resumes where this one stopped."""


class Permanent(Exception):
    """A failure no retry will fix (HTTP 404, say)."""


def fetch(url: str, part: Path, *, progress: Progress = SILENT, delays: tuple[float, ...] | None = None,
          what: str = "the download") -> Path:
    """Download ``url`` into ``part`` (resuming what it already holds) and return ``part`` once complete.

    Raises:
        EnvironmentFailure: the network failed on every attempt, or the server refused the file.
    """
    delays = RETRY_DELAYS if delays is None else delays
    for attempt in range(len(delays) + 1):
        try:
            _fetch_once(url, part, progress, what)
            return part
        except Permanent as exc:
            raise EnvironmentFailure(f"cannot download {what} from {url} ({exc})") from exc
        except Transient as exc:
            if attempt == len(delays):
                raise EnvironmentFailure(f"cannot download {what} from {url} ({exc})") from exc
            delay = delays[attempt]
            progress.note(f"{what}: {exc}; retrying in {delay:g} s (retry {attempt + 1} of {len(delays)}) ...")
            time.sleep(delay)
    raise AssertionError("unreachable")


def _fetch_once(url: str, part: Path, progress: Progress, what: str) -> None:
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have and _total_from(exc.headers.get("Content-Range")) == have:
            return  # the part is already complete (killed between the last byte and the unpack)
        if exc.code == 416:
            part.unlink(missing_ok=True)  # the part is longer than the file now: start over
            raise Transient("the partial download does not fit the file on the server; starting over") from exc
        if exc.code in _TRANSIENT_HTTP:
            raise Transient(f"HTTP {exc.code}") from exc
        raise Permanent(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise Transient(str(reason) or exc.__class__.__name__) from exc
    with response:
        if response.status == 206:
            start = _start_from(response.headers.get("Content-Range"))
            if start != have:
                part.unlink(missing_ok=True)
                raise Transient(f"the server resumed at byte {start}, not {have}; starting over")
        else:
            have = 0  # the server ignored Range (or there was nothing to resume): the whole file comes again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        bar = progress.bar(total or 0, what, unit="B", initial=have)
        try:
            with open(part, "ab" if have else "wb") as out:
                while True:
                    try:
                        block = response.read1(BLOCK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise Transient(f"connection lost after {out.tell():,} bytes ({exc.__class__.__name__})") from exc
                    if not block:
                        break
                    out.write(block)
                    out.flush()  # what arrived survives a kill
                    bar.update(len(block))
                got = out.tell()
                os.fsync(out.fileno())
        except OSError as exc:
            if isinstance(exc, (socket.timeout, ConnectionError)):
                raise Transient(str(exc)) from exc
            raise environment_failure(exc, str(part)) from exc
        finally:
            bar.close()
    if total is not None and got < total:
        raise Transient(f"connection closed after {got:,} of {total:,} bytes")


def _start_from(content_range: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-", content_range or "")
    return int(match.group(1)) if match else None


def _total_from(content_range: str | None) -> int | None:
    match = re.search(r"/(\d+)$", content_range or "")
    return int(match.group(1)) if match else None
