"""Artifacts on disk: atomic writes, SHA-256 digests, manifests and the cache lock.

Every stage writes its data files first and its manifest last, each atomically
(temporary file in the same folder, flush + fsync, ``os.replace``). Data without a
manifest is incomplete; a manifest names the SHA-256 of every file it vouches for,
so nothing is used (or unpickled) unless it is exactly what the stage wrote.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from stl10_similarity.errors import EnvironmentFailure, IntegrityError, MissingArtifactError, os_error_reason
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.store.paths import CACHE_ENV

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_ENV_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def environment_failure(exc: OSError, what: str) -> EnvironmentFailure:
    """Turn an OSError from writing into one clear line."""
    reason = os_error_reason(exc)
    where = ""
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):  # a cache dir one may not write: say where else
        where = f" (choose a writable cache dir: --cache-dir DIR or ${CACHE_ENV})"
    return EnvironmentFailure(f"cannot write {what}: {reason}{where}; previous artifacts are untouched")


def _short_write(exc: OSError, folder: Path) -> OSError:
    """A write cut short without an errno (numpy's ``tofile``): a full disk when the folder's file system has
    next to no room left, else the error as it was."""
    try:
        st = os.statvfs(folder)
        full = st.f_bavail * st.f_frsize < 2**20
    except OSError:
        full = False
    return OSError(errno.ENOSPC, f"No space left on device ({exc})") if full else exc


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets us fsync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: once, at import, before any thread writes
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Yield a binary file that appears at ``path`` only if the block completes."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise environment_failure(exc, str(path)) from exc
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a file we write should get what open() would give
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is None:  # numpy's short write ("N requested and M written")
            exc = _short_write(exc, path.parent)
        if isinstance(exc, OSError) and exc.errno in _ENV_ERRNOS:
            raise environment_failure(exc, str(path)) from exc
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as handle:
        handle.write(data)


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def write_npy_chunks(path: Path, shape: tuple[int, ...], dtype: Any, chunks: Any) -> None:
    """Write a ``.npy`` file from row chunks without holding the whole array (atomically)."""
    dtype = np.dtype(dtype)
    written = 0
    with atomic_file(path) as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": tuple(shape)})
        for block in chunks:
            block = np.ascontiguousarray(block, dtype=dtype)
            handle.write(block.tobytes())
            written += len(block)
        if written != shape[0]:
            raise ValueError(f"wrote {written} rows into {path}, expected {shape[0]}")


def staging_dir(folder: Path) -> Path:
    """A fresh folder beside a stage's artifacts where its next version is written in full first."""
    staging = folder / ".staging"
    shutil.rmtree(staging, ignore_errors=True)  # left by a run that was killed while writing
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise environment_failure(exc, str(staging)) from exc
    return staging


def commit_staged(folder: Path, staging: Path) -> dict[str, dict[str, Any]]:
    """Move every staged file into ``folder``, retiring the old manifest first; their manifest entries.

    The files are described (hashed) while still staged, so the stage reads as "not done" only for the
    moment of the renames, never as a mix of two runs; if writing the staged files failed (disk full), the
    previous artifacts are intact.
    """
    staged = sorted(staging.iterdir())
    described = {path.stem: describe_file(path) for path in staged}
    (folder / MANIFEST).unlink(missing_ok=True)
    for path in staged:
        os.replace(path, folder / path.name)
    staging.rmdir()
    _fsync_dir(folder)
    return described


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def library_versions(*names: str) -> dict[str, str]:
    """Versions of the libraries that shaped an artifact (only those already imported)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("numpy", "datasketch", *names):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def describe_file(path: Path) -> dict[str, Any]:
    """The manifest entry for one artifact file: name, size, SHA-256 and, for .npy, shape and dtype."""
    entry: dict[str, Any] = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if path.suffix == ".npy":
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        entry["shape"] = list(array.shape)
        entry["dtype"] = str(array.dtype)
    return entry


def write_manifest(
    folder: Path,
    *,
    stage: str,
    params: dict[str, Any],
    artifacts: dict[str, dict[str, Any]],
    inputs: dict[str, str],
    n: int,
    started: float,
    versions: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Describe the files just written and write the manifest last, atomically."""
    manifest = {
        "format": FORMAT_VERSION,
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": params,
        "inputs": inputs,
        "n": n,
        "wall_seconds": round(time.time() - started, 3),
        "versions": versions,
        "artifacts": artifacts,
        **(extra or {}),
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def manifest_digest(folder: Path) -> str:
    """The SHA-256 of a manifest file: what downstream stages record as their input."""
    return sha256_file(folder / MANIFEST)


def read_manifest(folder: Path, *, stage: str, make_cmd: str) -> dict[str, Any]:
    """Read a stage's manifest, or explain which command makes it."""
    path = folder / MANIFEST
    if not path.is_file():
        raise MissingArtifactError(f"no {stage} artifacts in {folder}: run `{make_cmd}` first")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path} is not a valid manifest ({exc.__class__.__name__}): rerun `{make_cmd}`") from exc
    if not isinstance(manifest, dict) or manifest.get("stage") != stage or "artifacts" not in manifest:
        raise IntegrityError(f"{path} is not a {stage} manifest: rerun `{make_cmd}`")
    if manifest.get("format") != FORMAT_VERSION:
        raise IntegrityError(f"{path} was written by another version of stl10sim: rerun `{make_cmd}`")
    return manifest


STAMPS = ".stamps.json"  # per stage folder: which artifacts were hashed, and their file stamps when they were
# A stamp taken within this long of the file's last change is not trusted: file times come from a coarse clock
# (and some file systems keep seconds), so a write right after it could leave the same times (git's "racy" rule).
RACY_NS = 2_000_000_000


def verified_path(folder: Path, manifest: dict[str, Any], name: str, *, make_cmd: str,
                  trust_stamp: bool = True) -> Path:
    """Return the path of artifact ``name`` once its size and SHA-256 match the manifest.

    Hashing gigabytes on every open is what made a million-image query process take 5 s, so a file hashed once
    is stamped (size, mtime, ctime, inode, device) in the folder's ``.stamps.json``; while its stamp holds it is
    not hashed again. Any write to the file changes its stamp (ctime can't be set back), so a truncated,
    replaced or edited file is hashed, and refused, as before. ``trust_stamp=False`` always hashes (pickles
    before unpickling, ``stl10sim verify``).
    """
    try:
        entry = manifest["artifacts"][name]
        path = folder / entry["file"]
        expected_size, expected_sha = int(entry["bytes"]), str(entry["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{folder / MANIFEST} does not list `{name}`: rerun `{make_cmd}`") from exc
    if not path.is_file():
        raise IntegrityError(f"{path} is missing: rerun `{make_cmd}`")
    before = path.stat()
    mismatch = IntegrityError(f"{path} does not match its manifest (truncated, corrupted or replaced): rerun `{make_cmd}`")
    if before.st_size != expected_size:
        raise mismatch
    stamp = _stamp(before, expected_sha)
    if trust_stamp and stamp is not None and _stamps(folder).get(path.name) == stamp:
        return path
    if sha256_file(path) != expected_sha:
        raise mismatch
    _restamp(folder, path.name, before, expected_sha)
    return path


def _stamp(st: os.stat_result, sha256: str) -> dict[str, Any] | None:
    """What a file's stamp must be for its recorded hash to hold; None while it is too fresh to trust."""
    if max(st.st_mtime_ns, st.st_ctime_ns) > time.time_ns() - RACY_NS:
        return None
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino, "dev": st.st_dev}


def _stamps(folder: Path) -> dict[str, Any]:
    try:
        stamps = json.loads((folder / STAMPS).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def _restamp(folder: Path, name: str, st: os.stat_result, sha256: str) -> None:
    """Record a just-verified file's stamp. Best effort: a read-only cache just hashes again next time; a lost
    or garbled stamps file costs one hashing, never a wrong answer (every field must match)."""
    stamp = _stamp(st, sha256)
    stamps = _stamps(folder)
    if stamps.get(name) == stamp:
        return
    if stamp is None:
        stamps.pop(name, None)
    else:
        stamps[name] = stamp
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{STAMPS}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w") as handle:
            json.dump(stamps, handle)
        os.replace(tmp, folder / STAMPS)  # no fsync: it is a cache
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def verify_stage(folder: Path, manifest: dict[str, Any], *, make_cmd: str) -> list[tuple[str, str | None]]:
    """Hash every artifact of a stage, whatever its stamp: ``(path, None)`` for each that matches its manifest,
    ``(path, why)`` for each that does not."""
    report: list[tuple[str, str | None]] = []
    for name, entry in sorted(manifest.get("artifacts", {}).items()):
        file = entry.get("file", name) if isinstance(entry, dict) else name
        where = str(folder / str(file))
        try:
            verified_path(folder, manifest, name, make_cmd=make_cmd, trust_stamp=False)
            report.append((where, None))
        except IntegrityError as exc:
            report.append((where, str(exc)))
    return report


def load_npy(folder: Path, manifest: dict[str, Any], name: str, *, make_cmd: str, mmap: bool = True) -> np.ndarray:
    """Load a verified ``.npy`` artifact, memory-mapped by default."""
    path = verified_path(folder, manifest, name, make_cmd=make_cmd)
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path} is not a readable .npy file: rerun `{make_cmd}`") from exc
    entry = manifest["artifacts"][name]
    if list(array.shape) != entry.get("shape") or str(array.dtype) != entry.get("dtype"):
        raise IntegrityError(f"{path} has shape {array.shape} {array.dtype}, not what its manifest says: rerun `{make_cmd}`")
    return array


def iter_npy_rows(path: Path, rows: int) -> Iterator[np.ndarray]:
    """Read a 2-D ``.npy`` file ``rows`` rows at a time with plain reads.

    Unlike a memory map, the pages read don't stay in this process's resident set, so a pass over
    5 GB of features costs one chunk of memory.
    """
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(handle)
        if fortran or len(shape) != 2:
            raise IntegrityError(f"{path} is not a C-ordered 2-D array")
        for lo in range(0, shape[0], rows):
            count = min(rows, shape[0] - lo) * shape[1]
            block = np.fromfile(handle, dtype=dtype, count=count)
            if block.size != count:
                raise IntegrityError(f"{path} is truncated")
            yield block.reshape(-1, shape[1])


@contextlib.contextmanager
def cache_lock(home: Path, *, wait: bool = True, progress: Progress = SILENT) -> Iterator[None]:
    """Hold the cache dir's lock so that two writers never interleave.

    Args:
        home: the collection's home (or the data dir) to lock.
        wait: block until the lock is free; otherwise fail at once.
        progress: told once if we have to wait.
    """
    import filelock

    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise environment_failure(exc, str(home)) from exc
    lock_path = home / ".lock"
    lock = filelock.FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if not wait:
            raise EnvironmentFailure(
                f"another stl10sim command is using {home}; wait for it, or drop {{wait=False}}",
                options=("wait=False",),
            ) from None
        progress.note(f"waiting for another stl10sim command to release {lock_path} ...")
        lock.acquire()
    except OSError as exc:
        raise environment_failure(exc, str(lock_path)) from exc
    try:
        yield
    finally:
        lock.release()


def json_text(doc: Any) -> str:
    """The one JSON rendering the faces share: ``stl10sim ... --json`` prints it, the API answers it."""
    return json.dumps(json_ready(doc), separators=(", ", ": "))


def json_ready(value: Any) -> Any:
    """Convert numpy scalars and arrays so that ``json`` can write them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value

