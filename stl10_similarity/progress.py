"""One way for the library to report progress: a :class:`Progress` it is handed.

Library code never prints. Long stages call ``progress.bar(...)`` for counted work and
``progress.note(...)`` for one-line notes ("waiting for the lock", "building the index");
the CLI passes a console implementation (tqdm and lines on stderr), tests and scripts the
silent default.
"""

from __future__ import annotations

from typing import Protocol


class Bar(Protocol):
    def update(self, n: int = 1) -> object: ...

    def close(self) -> object: ...


class Progress(Protocol):
    def note(self, message: str) -> None:
        """A one-line note about what is happening (not a result)."""

    def bar(self, total: int, desc: str, unit: str = "it", initial: int = 0) -> Bar:
        """A counter of ``total`` units of work, ``initial`` of them already done."""


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class Silent:
    """Reports nothing: the default for library calls."""

    def note(self, message: str) -> None:
        pass

    def bar(self, total: int, desc: str, unit: str = "it", initial: int = 0) -> Bar:
        return _NullBar()


SILENT = Silent()
