"""Ray, for the wings' Ray adapters (the optional ``ray`` extra): connecting, gathering tasks, one-line errors.

Each wing owns its adapter: ``ingest/ray_runner.py`` (embedding on actors), ``index/ray_shards.py`` (shards built
as tasks), ``search/ray_parts.py`` (one actor per shard answering queries) and ``duplicates_ray.py`` (a task per
duplicate tree). They get the ``ray`` module from :func:`connect`: Ray is imported only here, and only when one
of them runs. This module imports nothing of the package but errors and progress, so nothing imports upward.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from stl10_similarity.errors import EngineError
from stl10_similarity.progress import SILENT, Progress

CONNECT_TIMEOUT = 5.0  # seconds to reach a cluster's address before saying it is unreachable


def connect(address: str | None = None, progress: Progress = SILENT) -> Any:
    """Ray, initialised: the cluster at ``address`` (``host:port``, ``ray://host:port`` or ``auto``), or a local
    one started for this process. Raises :class:`EngineError` when Ray is absent or the address unreachable."""
    try:
        import ray
    except ImportError as exc:
        raise EngineError("the ray engine needs Ray: pip install 'stl10sim[ray]' (or use --engine local)") from exc
    if ray.is_initialized():
        return ray
    if address and address != "auto":
        _reachable(address)
    progress.note(f"connecting to the Ray cluster at {address} ..." if address else "starting a local Ray ...")
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EngineError(f"cannot start or reach Ray{f' at {address}' if address else ''}: "
                          f"{str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}") from exc
    return ray


def _reachable(address: str) -> None:
    """Fail in seconds when nothing listens at the address, before Ray's own connection retries start."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"--address {address}: give host:port (the head node's GCS port, 6379 by default), "
                          f"ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise EngineError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from exc


def first_line(exc: BaseException) -> str:
    """A Ray error's cause in one line (Ray wraps the worker's traceback around it)."""
    cause = getattr(exc, "cause", None)
    text = str(cause if cause is not None else exc).strip().splitlines()
    return text[-1][:300] if text else exc.__class__.__name__


def gathered(ray: Any, refs: list[Any], desc: str, unit: str, what: str, progress: Progress) -> list[Any]:
    """The results of Ray tasks, in the order given, with a progress bar moving as each finishes; a failed task
    is an :class:`EngineError` saying ``what`` it was doing."""
    bar = progress.bar(len(refs), desc, unit=unit)
    try:
        remaining = list(refs)
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            ray.get(done[0])  # raises now for a failed task
            bar.update(1)
        return ray.get(refs)
    except ray.exceptions.RayError as exc:
        raise EngineError(f"a Ray task failed {what}: {first_line(exc)}") from exc
    finally:
        bar.close()
