"""The STL-10 data set on disk: official layout, checksums, download/unpack, and fast readers.

Images are read straight from the binary files (uint8, channel-major, column-major)
into arrays in the orientation torchvision's ``STL10`` loader gives, without PIL and
without re-hashing the files: checksums are verified once by ``download`` and recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stl10_similarity.errors import DataError, EnvironmentFailure, InputError, ParameterError
from stl10_similarity.params import SPLITS
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.store.artifacts import cache_lock, environment_failure, write_json

URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
URL_ENV = "STL10SIM_URL"  # lets tests (and mirrors) serve the archive from elsewhere
ARCHIVE_NAME = "stl10_binary.tar.gz"
ARCHIVE_MD5 = "91f7769df0f17e558f3565bffb0c7dfb"
FOLDER = "stl10_binary"
FILE_MD5 = {
    "train_X.bin": "918c2871b30a85fa023e0c44e0bee87f",
    "train_y.bin": "5a34089d4802c674881badbb80307741",
    "unlabeled_X.bin": "5242ba1fed5e4be9e1e742405eb56ca4",
    "test_X.bin": "7f263ba9f9e0b06b93213547f721ac82",
    "test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
}
CLASS_NAMES_FILE = "class_names.txt"
RECORD = ".stl10sim-verified.json"
SIZE = 96
IMAGE_BYTES = 3 * SIZE * SIZE
PARTS = ("train", "test", "unlabeled")


def parts_of(split: str) -> tuple[str, ...]:
    """The files a split reads, in id order: ``train+test`` is train then test; ``all`` adds unlabeled."""
    return PARTS if split == "all" else tuple(split.split("+"))

REQUIRED = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", CLASS_NAMES_FILE)
DOWNLOAD_HINT = "run `stl10sim download` (or `stl10sim download --archive PATH` offline)"


def md5_file(path: Path, progress: Progress = SILENT, what: str | None = None) -> str:
    """The file's MD5; with ``what``, a progress bar of the bytes read (2.6 GB take a while)."""
    digest = hashlib.md5(usedforsecurity=False)
    bar = progress.bar(path.stat().st_size, what, unit="B") if what else None
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
            if bar is not None:
                bar.update(len(block))
    if bar is not None:
        bar.close()
    return digest.hexdigest()


def _file_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


# ---------------------------------------------------------------- layout checks


def check_layout(root: Path, parts: tuple[str, ...] = ("train", "test")) -> dict[str, int]:
    """Check that ``root`` holds the files of ``parts`` with consistent sizes.

    Returns:
        The number of images in each part.

    Raises:
        DataError: a file is missing, has a size that is not whole images, or its
            labels don't match its images.
    """
    if not root.is_dir():
        raise DataError(f"no STL-10 data in {root.parent}: {DOWNLOAD_HINT}")
    if not (root / CLASS_NAMES_FILE).is_file():
        raise DataError(f"{root / CLASS_NAMES_FILE} is missing: {DOWNLOAD_HINT}")
    counts = {}
    for part in parts:
        images = root / f"{part}_X.bin"
        if not images.is_file():
            raise DataError(f"{images} is missing: {DOWNLOAD_HINT}")
        size = images.stat().st_size
        if size == 0 or size % IMAGE_BYTES:
            raise DataError(f"{images} is {size} bytes, not a whole number of 96x96 RGB images: {DOWNLOAD_HINT}")
        counts[part] = size // IMAGE_BYTES
        if part != "unlabeled":
            labels = root / f"{part}_y.bin"
            if not labels.is_file():
                raise DataError(f"{labels} is missing: {DOWNLOAD_HINT}")
            if labels.stat().st_size != counts[part]:
                raise DataError(
                    f"{labels} has {labels.stat().st_size} labels for {counts[part]} images: {DOWNLOAD_HINT}"
                )
    return counts


def read_class_names(root: Path) -> list[str]:
    try:
        names = [line.strip() for line in (root / CLASS_NAMES_FILE).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {root / CLASS_NAMES_FILE}: {DOWNLOAD_HINT}") from exc
    if len(names) != 10:
        raise DataError(f"{root / CLASS_NAMES_FILE} lists {len(names)} classes, not 10: {DOWNLOAD_HINT}")
    return names


def read_labels(root: Path, part: str, count: int) -> np.ndarray:
    """0-based class indices (int16), or -1 for every unlabelled image."""
    if part == "unlabeled":
        return np.full(count, -1, dtype=np.int16)
    raw = np.fromfile(root / f"{part}_y.bin", dtype=np.uint8)
    bad = (raw < 1) | (raw > 10)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(f"{root / f'{part}_y.bin'} holds label {raw[first]} at {first}; STL-10 labels are 1..10")
    return raw.astype(np.int16) - 1


def read_images(root: Path, part: str, start: int, stop: int) -> np.ndarray:
    """Images ``start:stop`` of a part as uint8 ``(n, 3, 96, 96)``, oriented as torchvision's loader."""
    raw = np.memmap(root / f"{part}_X.bin", dtype=np.uint8, mode="r")
    block = raw[start * IMAGE_BYTES : stop * IMAGE_BYTES].reshape(-1, 3, SIZE, SIZE)
    return np.ascontiguousarray(block.transpose(0, 1, 3, 2))  # files are column-major


@dataclass(frozen=True)
class Stl10Source:
    """The images of a split in a stable order (train, then test, then unlabeled); an image's id is its position."""

    root: Path
    split: str
    parts: tuple[str, ...]
    counts: tuple[int, ...]
    limit: int | None = None
    kind = "stl10"

    @property
    def size(self) -> int:
        total = sum(self.counts)
        return total if self.limit is None else min(total, self.limit)

    @property
    def class_names(self) -> list[str]:
        return read_class_names(self.root)

    def keys(self) -> list[str]:
        return [f"{part}/{i}" for part, count in zip(self.parts, self.counts) for i in range(count)][: self.size]

    def labels(self) -> np.ndarray:
        labels = np.concatenate([read_labels(self.root, p, c) for p, c in zip(self.parts, self.counts)])
        return labels[: self.size]

    def images(self, start: int, stop: int) -> np.ndarray:
        """Images with ids ``start:stop`` (may span parts)."""
        stop = min(stop, self.size)
        pieces, offset = [], 0
        for part, count in zip(self.parts, self.counts):
            lo, hi = max(start - offset, 0), min(stop - offset, count)
            if lo < hi:
                pieces.append(read_images(self.root, part, lo, hi))
            offset += count
        if not pieces:
            return np.empty((0, 3, SIZE, SIZE), dtype=np.uint8)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def identity(self) -> dict[str, object]:
        return {"split": self.split, "limit": self.limit}

    def describe(self) -> dict[str, object]:
        data_dir = self.root.parent
        return {"kind": self.kind, "data_dir": str(data_dir), "split": self.split, "limit": self.limit,
                "parts": dict(zip(self.parts, self.counts)),
                "verified_md5": bool((verification_record(data_dir) or {}).get("verified_md5"))}


def open_source(data_dir: Path, split: str, limit: int | None = None) -> Stl10Source:
    """Open a split of the data dir, checking layout and label values up front."""
    if split not in SPLITS:
        raise ParameterError("split", f"{split!r} is not one of {', '.join(SPLITS)}")
    root = data_dir / FOLDER
    parts = parts_of(split)
    counts = check_layout(root, parts)
    read_class_names(root)
    source = Stl10Source(root, split, parts, tuple(counts[p] for p in parts), limit)
    source.labels()  # refuses bad label values before any work is done
    return source


KEYS_ARE_PATHS = False  # an STL-10 image's key is its position
REOPENS_BY_KEYS = False  # reopened, it holds every image of the collection, whatever keys are given


def describe_record(record: dict) -> str:
    return f"STL-10 {record.get('split')} in {record.get('data_dir')}"


def reopen(record: dict, keys: list[str] | None = None) -> Stl10Source:
    """The source a features manifest recorded, checked to still hold the same images (``keys``: unused, an
    STL-10 collection holds every image of its split)."""
    source = open_source(Path(record["data_dir"]), record["split"], record.get("limit"))
    if "parts" in record and dict(zip(source.parts, source.counts)) != record["parts"]:
        raise DataError(f"the STL-10 files in {record['data_dir']} changed since extraction: rerun `stl10sim extract`")
    return source


def verification_record(data_dir: Path) -> dict | None:
    """What ``download`` recorded about the files, if they are still the files it saw."""
    root = data_dir / FOLDER
    try:
        record = json.loads((root / RECORD).read_text())
        for name, stamp in record["files"].items():
            if _file_stamp(root / name) != stamp:
                return None
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------- download / unpack


@dataclass(frozen=True)
class DownloadResult:
    root: Path
    verified: bool
    source: str  # "cached", "archive", "network" or "existing files"
    counts: dict[str, int]


def _temp_dir(data_dir: Path, prefix: str) -> Path:
    """A private folder inside the data dir, so that the final move is a rename on one filesystem."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=data_dir))
    except OSError as exc:
        raise environment_failure(exc, str(data_dir)) from exc


def _safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = []
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
            raise DataError(f"{tar.name!s} holds an unsafe entry {member.name!r}; refusing to unpack it")
        if parts and parts[0] == FOLDER:
            members.append(member)
    return members


def _unpack(archive: Path, data_dir: Path, progress: Progress = SILENT) -> Path:
    """Unpack ``stl10_binary/`` from the archive into a temporary folder inside ``data_dir``."""
    staging = _temp_dir(data_dir, ".stl10sim-unpack-")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _safe_members(tar)
            if not members:
                raise DataError(f"{archive} holds no {FOLDER}/ folder; it is not an STL-10 archive")
            bar = progress.bar(sum(m.size for m in members), "unpack STL-10", unit="B")
            for member in members:
                tar.extract(member, staging, filter="data")
                bar.update(member.size)
            bar.close()
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, tarfile.TarError) and exc.errno is not None:
            raise environment_failure(exc, str(data_dir)) from exc
        raise DataError(f"{archive} is not a readable .tar.gz archive ({exc.__class__.__name__}); download it again") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _install(staging: Path, data_dir: Path) -> None:
    """Swap the unpacked folder into place; the old one goes only once the new one is there."""
    target = data_dir / FOLDER
    old = None
    if target.exists():
        old = data_dir / f".{FOLDER}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(staging / FOLDER, target)
    shutil.rmtree(staging, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_file_md5s(root: Path, verify: bool, progress: Progress) -> bool:
    mismatched = [name for name, md5 in FILE_MD5.items()
                  if (root / name).is_file() and md5_file(root / name, progress, f"verify {name} (MD5)") != md5]
    missing = [name for name in FILE_MD5 if not (root / name).is_file()]
    if not mismatched and not missing:
        return True
    what = ", ".join(mismatched + [f"{m} (missing)" for m in missing])
    if verify:
        raise DataError(f"STL-10 files in {root} do not match the official checksums: {what}; accept them with "
                        "{verify=False}", options=("verify=False",))
    progress.note(f"warning: not the official STL-10 files ({what}); using them unverified as asked")
    return False


def _record(root: Path, verified: bool, archive: dict[str, object] | None = None) -> None:
    files = {p.name: _file_stamp(p) for p in sorted(root.iterdir()) if p.is_file() and p.name != RECORD}
    write_json(root / RECORD, {"verified_md5": verified, "files": files, "archive": archive})


def _archive_stamp(archive: Path) -> dict[str, object]:
    return {"path": str(archive.resolve()), **_file_stamp(archive)}


def download(
    data_dir: Path,
    *,
    archive: Path | None = None,
    verify: bool = True,
    progress: Progress = SILENT,
) -> DownloadResult:
    """Make ``data_dir/stl10_binary`` hold STL-10, verified once.

    Uses, in order: ``archive`` if given (nothing to do when the files came from this very archive);
    files already in place; an ``stl10_binary.tar.gz`` placed in ``data_dir``; the network
    (``$STL10SIM_URL`` overrides the address), resuming an interrupted download. Holds the data dir's
    lock throughout, so two commands never unpack into it at once.

    Raises:
        DataError: the archive or files don't match the official checksums (and ``verify``).
        EnvironmentFailure: no network and nothing local to use.
    """
    root = data_dir / FOLDER
    with cache_lock(data_dir, progress=progress):
        record = verification_record(data_dir)
        trusted = record is not None and bool(record["verified_md5"] or not verify)
        if record is not None and trusted and (archive is None or record.get("archive") == _archive_stamp(Path(archive))):
            return DownloadResult(root, record["verified_md5"], "cached", check_layout(root, _present_parts(root)))
        if archive is not None:
            return _from_archive(Path(archive), data_dir, verify, progress, "archive")
        if root.is_dir() and all((root / f).is_file() for f in REQUIRED):
            counts = check_layout(root, _present_parts(root))
            verified = _check_file_md5s(root, verify, progress)
            _record(root, verified)
            return DownloadResult(root, verified, "existing files", counts)
        local = data_dir / ARCHIVE_NAME
        if local.is_file():
            return _from_archive(local, data_dir, verify, progress, "archive")
        return _from_network(data_dir, verify, progress)


def open_or_download(data_dir: Path, split: str, limit: int | None = None, *, archive: Path | None = None,
                     verify: bool = True, progress: Progress = SILENT) -> Stl10Source:
    """What ``extract`` reads: the split, fetched first (as :func:`download` does) when the data dir has no
    ``stl10_binary/`` or an ``archive`` is given. Files that are there but damaged are reported, not replaced."""
    if archive is not None or not (data_dir / FOLDER).exists():
        download(data_dir, archive=archive, verify=verify, progress=progress)
    return open_source(data_dir, split, limit)


def _present_parts(root: Path) -> tuple[str, ...]:
    return tuple(p for p in PARTS if (root / f"{p}_X.bin").is_file())


def _archive_ok(archive: Path, verify: bool, progress: Progress = SILENT) -> bool:
    """Whether the archive is the official one; raises when it is not and ``verify`` is on."""
    if md5_file(archive, progress, "verify the archive (MD5)") == ARCHIVE_MD5:
        return True
    if verify:
        raise DataError(
            f"{archive} does not match the official STL-10 checksum (md5 {ARCHIVE_MD5}); "
            "nothing was unpacked; accept it anyway with {verify=False}", options=("verify=False",)
        )
    return False


def _from_archive(archive: Path, data_dir: Path, verify: bool, progress: Progress, source: str,
                  archive_ok: bool | None = None) -> DownloadResult:
    if not archive.is_file():
        raise InputError(f"archive {archive} does not exist")
    if archive_ok is None:
        archive_ok = _archive_ok(archive, verify, progress)
    stamp = _archive_stamp(archive) if source == "archive" else None
    staging = _unpack(archive, data_dir, progress)
    try:
        unpacked = staging / FOLDER
        missing = [f for f in REQUIRED if not (unpacked / f).is_file()]
        if missing:
            raise DataError(f"{archive} lacks {', '.join(missing)}; it is not an STL-10 archive")
        counts = check_layout(unpacked, _present_parts(unpacked))
        if not archive_ok:
            what = archive if source == "archive" else "the downloaded archive"
            progress.note(f"warning: {what} is not the official STL-10 archive; using it unverified as asked")
        _record(unpacked, archive_ok, stamp)
        _install(staging, data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DownloadResult(data_dir / FOLDER, archive_ok, source, counts)


def download_url() -> str:
    """Where STL-10 comes from: ``$STL10SIM_URL`` (a mirror, or a local server in tests), else Stanford."""
    return os.environ.get(URL_ENV) or URL


def _from_network(data_dir: Path, verify: bool, progress: Progress) -> DownloadResult:
    """Fetch the archive (resuming ``stl10_binary.tar.gz.part``), check its MD5, unpack it, delete it.

    An archive with the wrong MD5 is deleted and fetched once more (a corrupted transfer); a second
    mismatch is refused. The part file stays until the files are installed, so a kill at any point
    costs at most the bytes in flight.
    """
    from stl10_similarity.sources.fetch import fetch

    url = download_url()
    if not url.startswith(("http://", "https://")):
        raise InputError(f"${URL_ENV} must be an http:// or https:// address, not {url!r}")
    part = data_dir / (ARCHIVE_NAME + ".part")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise environment_failure(exc, str(data_dir)) from exc
    offline = (f"offline, put {ARCHIVE_NAME} in {data_dir} and rerun, or pass {{archive=PATH}}",
               ("archive=PATH",))
    for attempt in (1, 2):
        try:
            fetch(url, part, progress=progress, what="STL-10")
        except EnvironmentFailure as exc:
            raise EnvironmentFailure(f"{exc.template}: {offline[0]}", options=offline[1]) from exc
        if md5_file(part, progress, "verify the download (MD5)") == ARCHIVE_MD5:
            ok = True
        elif not verify:
            ok = False
        elif attempt == 1:
            progress.note(f"the downloaded archive does not match the official checksum (md5 {ARCHIVE_MD5}); "
                          "fetching it once more")
            part.unlink()
            continue
        else:
            part.unlink()
            raise DataError(f"STL-10 from {url} failed its checksum twice (md5 {ARCHIVE_MD5}); nothing was unpacked; "
                            "check the address, or accept unofficial data with {verify=False}",
                            options=("verify=False",))
        result = _from_archive(part, data_dir, verify, progress, "network", archive_ok=ok)
        part.unlink(missing_ok=True)
        return result
    raise AssertionError("unreachable")
