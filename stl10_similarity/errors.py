"""Domain errors. Each message names what was wrong and what to do about it, in the library's terms.

The CLI maps :class:`InputError` (and subclasses) to exit code 2 and every other
:class:`Stl10SimError` to exit code 1. A message that refers to a parameter writes it as ``{name}``
(listed in ``options``): Python callers read the parameter's name (``image_id``, ``verify=False``),
the CLI reads its flag (``--image-id``, ``--no-verify``), from one message.
"""

from __future__ import annotations

from collections.abc import Callable


class Stl10SimError(Exception):
    """Base class: a failure the user can act on (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, *, options: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.template = message
        self.options = options

    def render(self, spell: Callable[[str], str] = lambda name: name) -> str:
        """The message with each ``{option}`` spelled by ``spell`` (the CLI passes its flag names)."""
        text = self.template
        for name in self.options:
            text = text.replace("{" + name + "}", spell(name))
        return text

    def __str__(self) -> str:
        return self.render()


class InputError(Stl10SimError):
    """Bad usage or bad input: a value, a file, or a missing earlier stage (exit code 2)."""

    exit_code = 2


class ParameterError(InputError):
    """A parameter's value is out of range or not one of its choices."""

    def __init__(self, param: str, message: str, *, options: tuple[str, ...] = ()) -> None:
        super().__init__("{" + param + "} " + message, options=(param, *options))
        self.param = param


class MissingArtifactError(InputError):
    """A stage's input does not exist yet; the message names the command that makes it."""


class StaleArtifactError(InputError):
    """An artifact was made from other inputs or parameters than the ones on disk now."""


class IntegrityError(InputError):
    """An artifact does not match the SHA-256, shape or size its manifest recorded."""


class DataError(InputError):
    """The source's files are missing, malformed or fail their checksums."""


class ImageGoneError(InputError):
    """A collection image's file changed or vanished since the collection was extracted."""


class NoImagesError(InputError):
    """The collection holds features only (imported): there are no images to show or embed alike."""


class WeightsError(InputError):
    """A weights file cannot be read or does not fit MobileNetV2."""


class EngineError(InputError):
    """The distributed engine can't be used: Ray is not installed, its cluster can't be reached, a task failed."""


class EnvironmentFailure(Stl10SimError):
    """The environment stopped us: no network, disk full, a read-only folder, a held lock."""


def os_error_reason(exc: OSError) -> str:
    """What an OSError means, in words: a full disk, a read-only folder, and so on."""
    import errno

    return {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the folder is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EMFILE: "too many open files",
        errno.ENOMEM: "out of memory",
    }.get(exc.errno or 0, exc.strerror or str(exc))
