"""Every parameter a user can set, defined once: typed, frozen, validated on creation.

The CLI builds its options (defaults, choices, ranges) from these classes, so a default or a choice
list is written here and nowhere else. Importing this module imports neither numpy nor torch, so
``stl10sim --help`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from stl10_similarity.errors import ParameterError

DIM = 1280  # MobileNetV2's pooled feature size
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
METHODS = ("auto", "rerank", "forest", "exact", "forest-query")
BASES = ("raw", "centered", "standardized")
SET_KINDS = ("centroids", "top-dims")  # how images become the sets the forest indexes (sets.py)
SPLITS = ("train", "test", "train+test", "unlabeled", "all")
STAGES = ("index", "extract")
ENGINES = ("local", "ray")  # where the work runs: this process, or a Ray cluster (the ray extra)
TOKEN_ENV = "STL10SIM_TOKEN"  # where `stl10sim serve` finds its token when --token is not given
DEFAULT_COLLECTION = "stl10"  # STL-10, in the cache dir itself; others live in collections/NAME
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")  # what a folder collection reads
PICTURE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # --png: suffix -> format written
POOL_FACTOR = 5  # the forest gathers this many times the candidate budget before picking the best candidates ...
# ... and, beyond POOL_GROWTH_FROM images, (N / POOL_GROWTH_FROM) ** POOL_GROWTH times more: at a fixed pool recall
# falls as N grows; 4,000 found 0.97 at 50,000 real photos and ~8,000 0.97-0.98 at a simulated million
POOL_GROWTH_FROM = 50_000
POOL_GROWTH = 0.25
# `auto` scans every image (exact) up to this many, and uses the forest (rerank) beyond. On nested subsets of
# 50,000 real photos (benchmarks/scan_limit.py, 2-core Xeon): a scan's p50 was 1.3 ms at 12,500 images against
# rerank's 1.7 ms, 3.1-4.5 vs 1.9 ms at 25,000 (rerank recall@10 0.98) and 10.1 vs 2.3 ms at 50,000 (0.97); up to
# 20,000 a scan stays within ~1.3x of rerank's time and is always right
SCAN_LIMIT = 20_000
# rerank chooses which candidates get an exact cosine by a 128-direction int8 projection of the features
# (index/projection.py) when its directions hold enough of the variance, else by shared top-K dimensions. On
# 50,000 real photos (share 0.76) the pool's best 1/20 by projection lost 0.002 of the pool's recall (0.965 of
# 0.967); with the directions diluted by dimension-shuffled copies of the photos, 1/20 lost 0.003 at share 0.64
# and 0.015-0.022 at 0.52-0.58, 1/10 lost 0.000-0.008 (benchmarks/prefilter.py, results/prefilter.json)
PROJECTION_DIMS = 128
PROJECTION_TRUSTED = 0.7  # at least this share: the best 1/20 of the pool ...
PROJECTION_USEFUL = 0.5  # ... at least this: the best 1/10; below it, the candidates sharing most top-K dimensions
PROJECTION_KEEP = {PROJECTION_TRUSTED: 1 / 20, PROJECTION_USEFUL: 1 / 10}
# A batch of at least this many queries loads the compiled rerank (search/compiled.py) first: loading costs ~0.45 s
# a process (~10 s the first time on a machine) and saves ~0.7 ms a query at 50,000 images, more at a million
COMPILED_BATCH = 500
# A build of at least this many rows picks each row's top-K dimensions by a compiled select (index/select_kernel.py):
# loading numba costs ~0.2 s a process and its select saves ~4 us a row against torch's topk (~4.5 s at a million)
COMPILED_TOP_K_ROWS = 100_000
NO_COMPILED_ENV = "STL10SIM_NO_COMPILED"  # set (to anything but "" or "0"): numpy and torch only, never numba


def compiled_disabled() -> bool:
    """Whether this process was told not to load numba (``NO_COMPILED_ENV``)."""
    return os.environ.get(NO_COMPILED_ENV, "") not in ("", "0")
IMAGES_PER_CENTROID = 50  # `centroids` sets: one learned centroid per this many images ...
MIN_CENTROIDS = 64  # ... but at least this many ...
MAX_CENTROIDS = 4096  # ... and at most this many (fitting and assigning cost grows with it)


def usable_cores() -> int:
    """How many cores this process may run on: the default number of threads for work that releases the GIL."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _spec(default: Any, *, choices: tuple[str, ...] | None = None, low: int | None = None,
          high: int | None = None) -> Any:
    return field(default=default, metadata={"choices": choices, "low": low, "high": high})


def _check(obj: Any) -> None:
    """Check every field against the choices and range its spec declares."""
    for f in fields(obj):
        value, meta = getattr(obj, f.name), f.metadata
        if value is None and f.default is None:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            raise ParameterError(f.name, f"{value!r} is not one of {', '.join(meta['choices'])}")
        low, high = meta.get("low"), meta.get("high")
        if low is not None or high is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ParameterError(f.name, f"{value!r} is not a whole number")
            if (low is not None and value < low) or (high is not None and value > high):
                span = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise ParameterError(f.name, f"must be {span}, got {value}")


def spec(cls: type, name: str) -> tuple[Any, dict[str, Any]]:
    """A field's default and its metadata (choices, low, high): what the CLI builds an option from."""
    f = next(f for f in fields(cls) if f.name == name)
    return f.default, dict(f.metadata)


@dataclass(frozen=True)
class ExtractParams:
    """How features are extracted. ``batch_size`` None: chosen by precision, device and input size."""

    split: str = _spec("train+test", choices=SPLITS)
    limit: int | None = _spec(None, low=1)
    batch_size: int | None = _spec(None, low=1, high=4096)
    device: str = _spec("auto", choices=DEVICES)
    weights: str = "imagenet"  # imagenet | none | a path to a state dict
    image_size: int = _spec(224, low=32, high=1024)
    precision: str = _spec("auto", choices=PRECISIONS)
    chunk_size: int = _spec(2048, low=1)

    def __post_init__(self) -> None:
        _check(self)
        if not self.weights:
            raise ParameterError("weights", "is empty: give imagenet, none or a path")


@dataclass(frozen=True)
class IndexParams:
    """How images become sets, signatures and a forest.

    ``sets``: ``centroids`` indexes each image's ``set_size`` nearest of ``centroids`` learned centroids
    (None: about one per ``IMAGES_PER_CENTROID`` images); ``top-dims`` its ``top_k`` largest dimensions in
    ``basis``. The top-``top_k`` sets are kept either way: every result shows their Jaccard.
    """

    top_k: int = _spec(100, low=1, high=DIM)
    num_perm: int = _spec(128, low=1)
    trees: int = _spec(32, low=1)
    basis: str = _spec("centered", choices=BASES)
    sets: str = _spec("centroids", choices=SET_KINDS)
    centroids: int | None = _spec(None, low=2, high=65_534)
    set_size: int = _spec(12, low=1, high=256)

    def __post_init__(self) -> None:
        _check(self)
        if self.num_perm < self.trees:
            raise ParameterError("num_perm", f"({self.num_perm}) must be at least {{trees}} ({self.trees})",
                                 options=("trees",))
        if self.num_perm % self.trees:
            raise ParameterError("num_perm", f"({self.num_perm}) must be a multiple of {{trees}} ({self.trees})",
                                 options=("trees",))


@dataclass(frozen=True)
class ShardParams:
    """How many shards an index is built as: contiguous rows, each an ordinary index with one shared vocabulary;
    queries fan out to every shard and merge (the answers of one index with the same parameters)."""

    shards: int = _spec(1, low=1, high=4096)

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class SearchParams:
    """One query: how many results, which method, the candidate budget (``rerank``'s pool is ``POOL_FACTOR`` times
    it); a batch of queries: on how many threads."""

    k: int = _spec(5, low=1)
    method: str = _spec("auto", choices=METHODS)
    candidates: int = _spec(800, low=1)
    threads: int | None = _spec(None, low=1, high=1024)  # a batch of queries: None = every core

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class EvaluateParams:
    """Methods compared side by side on the collection's own images. ``queries`` None: every image."""

    queries: int | None = _spec(None, low=1)
    k: int = _spec(10, low=1)
    methods: tuple[str, ...] = ("forest", "rerank", "auto", "exact")
    candidates: int = SearchParams.candidates
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self)
        SearchParams(k=self.k, candidates=self.candidates)
        for method in self.methods:
            SearchParams(method=method)
        if not self.methods:
            raise ParameterError("methods", "is empty: name at least one method")


@dataclass(frozen=True)
class BenchParams:
    """``stl10sim bench``: index stage on synthetic vectors, or extract stage on real images."""

    stage: str = _spec("index", choices=STAGES)
    n: int | None = _spec(None, low=16)  # None: INDEX_BENCH_N or EXTRACT_BENCH_N by stage
    k: int = _spec(10, low=1, high=100)
    queries: int = _spec(1000, low=1)
    baseline_n: int = _spec(100_000, low=1)
    budgets: tuple[int, ...] = (400, 800, 1600)
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self)
        if self.stage == "index" and self.k >= self.size:
            raise ParameterError("k", f"({self.k}) must be smaller than {{n}} ({self.size})", options=("n",))
        for budget in self.budgets:
            if budget < 1:
                raise ParameterError("budgets", f"must all be at least 1, got {budget}")

    @property
    def size(self) -> int:
        if self.n is not None:
            return self.n
        return INDEX_BENCH_N if self.stage == "index" else EXTRACT_BENCH_N


# what one request to `stl10sim serve` may ask for (larger asks are refused with a 4xx); the page learns max_k
# from /api/v1/health
SERVE_MAX_K = 1000  # results of one search
SERVE_MAX_CANDIDATES = 100_000  # rerank's candidate budget of one search
SERVE_PAGE_LIMIT = 500  # images of one /api/v1/images page
SERVE_GROUP_PAGE_LIMIT = 100  # groups of one /api/v1/duplicates page


@dataclass(frozen=True)
class ServeParams:
    """``stl10sim serve``: where it listens, who may ask (docs/server.md, "Security") and how much it accepts."""

    host: str = "127.0.0.1"  # loopback only unless asked otherwise
    port: int = _spec(8000, low=1, high=65535)
    allow_hosts: tuple[str, ...] = ()  # Host names answered besides loopback's and ``host`` (a reverse proxy's)
    token: str | None = field(default=None, repr=False)  # None: none on loopback, a random one made elsewhere
    max_upload_mb: int = _spec(10, low=1, high=1024)
    max_concurrent: int = _spec(32, low=1, high=1024)
    max_uploads: int = _spec(4, low=1, high=256)  # uploads queued for the model or embedding; beyond: 503
    # request bodies held at once, all connections together: 200 slow uploads can't take 2 GB
    max_buffered_mb: int = _spec(64, low=1, high=65536)
    body_timeout: int = _spec(30, low=1, high=3600)  # seconds for a request body to arrive: 10 MB at 3 Mbit/s
    header_timeout: int = _spec(10, low=1, high=600)  # seconds for a request's headers to arrive
    # "copy": the index and features are read into the server's memory, so no other process can pull pages
    # from under it (a file truncated in place under a mapping kills the process with SIGBUS); "map": mapped,
    # for collections larger than memory, checked between requests only
    artifacts: str = _spec("copy", choices=("copy", "map"))

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 2**20

    @property
    def max_buffered_bytes(self) -> int:
        return self.max_buffered_mb * 2**20

    def __post_init__(self) -> None:
        _check(self)
        if not self.host:
            raise ParameterError("host", "is empty")
        if self.max_buffered_mb < self.max_upload_mb:
            raise ParameterError("max_buffered_mb", f"must be at least {{max_upload_mb}} ({self.max_upload_mb}), "
                                                    f"got {self.max_buffered_mb}", options=("max_upload_mb",))


@dataclass(frozen=True)
class EngineParams:
    """Where extraction and near-duplicate search run. ``ray``: on the cluster at ``address`` (None: a local
    one), ``actors`` embedding actors (None: one per CPU, or per ``gpus_per_actor`` GPUs, of the cluster)."""

    engine: str = _spec("local", choices=ENGINES)
    address: str | None = None
    actors: int | None = _spec(None, low=1)
    gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        _check(self)
        if not 0 <= self.gpus_per_actor <= 64:
            raise ParameterError("gpus_per_actor", f"must be between 0 and 64, got {self.gpus_per_actor}")
        given = [name for name, value in (("address", self.address), ("actors", self.actors),
                                          ("gpus_per_actor", self.gpus_per_actor)) if value]
        if self.engine == "local" and given:
            raise ParameterError(given[0], "is for {engine} ray", options=("engine",))


DUPLICATE_KINDS = ("exact", "near", "similar")  # strictest first: byte-identical files, the same picture, alike
KEEP_RULES = ("largest", "oldest", "newest")  # which image of a group is kept; or "prefer:PREFIX" (a path prefix)


@dataclass(frozen=True)
class DuplicatesParams:
    """``stl10sim duplicates``: which kinds of groups to list, what counts as each, and which image a group keeps.

    ``near``: the pixel correlation (``duplicates.pixels``) that confirms a near-duplicate among each image's
    ``neighbours`` most similar images at cosine >= ``floor``; ``similar``: the features' cosine of two
    photos of the same scene; ``near_cosine``: what confirms a near-duplicate when the collection has no images
    (imported features). Measured on planted edits of real photos, two splits (docs/collections.md).
    """

    kinds: tuple[str, ...] = ("exact", "near")
    near: float = 0.96
    similar: float = 0.90
    near_cosine: float = 0.95
    floor: float = 0.70
    neighbours: int = 5
    keep: str = "largest"

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in DUPLICATE_KINDS]
        if unknown or not self.kinds:
            raise ParameterError("kind", f"must be one or more of {', '.join(DUPLICATE_KINDS)}, got "
                                         f"{', '.join(self.kinds) or 'none'}")
        for name in ("near", "similar", "near_cosine", "floor"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ParameterError(name, f"must be in (0, 1], got {getattr(self, name)}")
        if not 1 <= self.neighbours <= 100:
            raise ParameterError("neighbours", f"must be between 1 and 100, got {self.neighbours}")
        if self.keep not in KEEP_RULES and not (self.keep.startswith("prefer:") and len(self.keep) > 7):
            raise ParameterError("keep", f"must be one of {', '.join(KEEP_RULES)} or prefer:PATH_PREFIX, got "
                                         f"{self.keep!r}")


INDEX_BENCH_N = 1_000_000
EXTRACT_BENCH_N = 256
