"""Overlap work with a GPU's compute: read (and pin) the next batches on a thread, write finished chunks on another.

On a GPU the card otherwise waits for the host to read, lay out and fsync. On a 2-core CPU the threads
only compete with torch for the same cores (measured slower: docs/decisions.md), so ``extract`` uses
them on GPUs only. Errors on either thread are raised in the caller, never lost.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetched(items: Iterable[T], depth: int = 3) -> Iterator[T]:
    """Yield ``items``, produced on a background thread up to ``depth`` ahead; re-raises the producer's errors."""
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            slots.put(_Failed(exc))

    thread = threading.Thread(target=produce, name="stl10sim-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()  # the consumer stopped early (an error, Ctrl-C): let the producer end
        thread.join(timeout=5)


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class BackgroundWriter:
    """Runs jobs (chunk writes) in order on one thread; ``close`` waits for them and re-raises the first error."""

    def __init__(self, depth: int = 2) -> None:
        self._jobs: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stl10sim-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _DONE:
                return
            if self._error is None:
                try:
                    job()
                except BaseException as exc:
                    self._error = exc

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._error is not None:
            raise self._error
        self._jobs.put(lambda: fn(*args))

    def close(self) -> None:
        self._jobs.put(_DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error
