"""Domain errors. Each message names what was wrong and what to do about it.

The CLI maps :class:`InputError` (and subclasses) to exit code 2 and every other
:class:`Stl10SimError` to exit code 1.
"""

from __future__ import annotations


class Stl10SimError(Exception):
    """Base class: a failure the user can act on (exit code 1)."""

    exit_code = 1


class InputError(Stl10SimError):
    """Bad usage or bad input: a value, a file, or a missing earlier stage (exit code 2)."""

    exit_code = 2


class MissingArtifactError(InputError):
    """A stage's input does not exist yet; the message names the command that makes it."""


class StaleArtifactError(InputError):
    """An artifact was made from other inputs or parameters than the ones on disk now."""


class IntegrityError(InputError):
    """An artifact does not match the SHA-256, shape or size its manifest recorded."""


class DataError(InputError):
    """The STL-10 files are missing, malformed or fail their checksums."""


class WeightsError(InputError):
    """A weights file cannot be read or does not fit MobileNetV2."""


class EnvironmentFailure(Stl10SimError):
    """The environment stopped us: no network, disk full, a read-only folder, a held lock."""
