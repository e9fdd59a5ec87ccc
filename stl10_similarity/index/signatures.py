"""Sets and MinHash signatures, in bulk.

A set is a row of integer tokens (``sets.py`` says which: nearest centroids, or the K feature dimensions
with the largest values after centring or standardising each dimension with collection statistics).
Token ``i`` is ``str(i).encode()``, hashed as datasketch's ``MinHash.update`` would. The universe is
small (hundreds to thousands of tokens), so each token is hashed and permuted once into a
``universe x num_perm`` table and a signature is the column-wise minimum over the set's rows:
bit-identical to datasketch, without a Python loop per image.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from stl10_similarity import numba_modules
from stl10_similarity.params import DIM, usable_cores

SCHEME = "affine32"  # datasketch >= 2 default; recorded in every index manifest
SEED = 1  # datasketch's default MinHash seed
_CHUNK = 4096


def token(dim: int) -> bytes:
    return str(int(dim)).encode()


def _fmix32(hv: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the pre-mix datasketch's affine32 scheme applies."""
    hv = hv ^ (hv >> np.uint32(16))
    hv = hv * np.uint32(0x85EBCA6B)
    hv = hv ^ (hv >> np.uint32(13))
    hv = hv * np.uint32(0xC2B2AE35)
    return hv ^ (hv >> np.uint32(16))


def permuted_token_table(num_perm: int, seed: int = SEED, dim: int = DIM) -> np.ndarray:
    """Each token's hash under each of the MinHash's permutations: ``(dim, num_perm)`` uint32."""
    from datasketch import MinHash
    from datasketch.hashfunc import sha1_hash32

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations
    hashed = _fmix32(np.array([sha1_hash32(token(i)) for i in range(dim)], dtype=np.uint32))
    with np.errstate(over="ignore"):  # uint32 wrap-around is the scheme's modulo 2**32
        return (hashed[:, None] * a.astype(np.uint32)[None, :] + b.astype(np.uint32)[None, :]).astype(np.uint32)


def token_table(num_perm: int, universe: int, seed: int = SEED) -> np.ndarray:
    """The table signatures are computed with: ``universe`` token rows, then the padding token's row.

    The padding row holds datasketch's initial hash value (2**32 - 1) everywhere, so padding never lowers a
    minimum: a padded set's signature is its real tokens' (and an empty set's is datasketch's empty MinHash).
    """
    table = permuted_token_table(num_perm, seed, universe)
    return np.vstack([table, np.full((1, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)])


def set_statistics(features: np.ndarray | Iterable[np.ndarray], chunk: int = 4096) -> np.ndarray:
    """Per-dimension mean and standard deviation ``(2, dim)`` float32, from an array or an iterable of row chunks.

    Sums in float64, ``chunk`` rows at a time on every core, each thread through one reused buffer (2x faster
    than a fresh float64 copy a chunk); the chunks' sums are added in order, so the result is the same on any
    number of threads."""
    blocks = [features] if isinstance(features, np.ndarray) else features
    parts = (block[lo : lo + chunk] for block in blocks for lo in range(0, len(block), chunk))
    local = threading.local()

    def sums(part: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        part = np.asarray(part)
        buffer = getattr(local, "buffer", None)
        if buffer is None or buffer.shape[1] != part.shape[1]:
            buffer = local.buffer = np.empty((chunk, part.shape[1]), dtype=np.float64)
        rows = buffer[: len(part)]
        rows[:] = part
        total = rows.sum(0)
        np.multiply(rows, rows, out=rows)
        return total, rows.sum(0), len(part)

    total = squares = None
    count = 0
    threads = usable_cores()
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[tuple[np.ndarray, np.ndarray, int]]] = deque()
        for part in itertools.chain(parts, [None] * (2 * threads)):  # a few chunks in flight: memory stays bounded
            if part is not None:
                pending.append(pool.submit(sums, part))
            if len(pending) > 2 * threads or (part is None and pending):
                part_total, part_squares, rows = pending.popleft().result()  # in order: the same sums anywhere
                total = part_total if total is None else total + part_total
                squares = part_squares if squares is None else squares + part_squares
                count += rows
    if total is None or squares is None or count == 0:
        raise ValueError("no features to compute statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return np.stack([mean, np.maximum(std, 1e-6)]).astype(np.float32)


def to_set_basis(features: np.ndarray, basis: str, stats: np.ndarray | None) -> np.ndarray:
    """Features as the set is formed from them: raw, centred, or standardised per dimension."""
    x = np.asarray(features, dtype=np.float32)
    if basis == "raw":
        return x
    if stats is None:
        raise ValueError(f"set basis {basis!r} needs collection statistics")
    x = x - stats[0]
    return x / stats[1] if basis == "standardized" else x


def top_k_sets(
    features: np.ndarray, top_k: int, basis: str = "raw", stats: np.ndarray | None = None, chunk: int = _CHUNK,
    compiled: bool = False,
) -> np.ndarray:
    """Indices of each row's ``top_k`` largest values, sorted ascending: ``(n, top_k)`` uint16.

    Chunked (bounded memory); torch's ``topk`` on every core took 1.9-2.0 s for 262,144 rows of the simulated
    million where numpy's ``argpartition`` on two threads took 2.4-2.9 s (equal values may be picked differently).
    ``compiled`` (what builds of ``COMPILED_TOP_K_ROWS`` rows or more ask): numba's radix select
    (``select_kernel.py``) on every core, 1.05 s for those rows on one, ties to the smaller dimension; torch where
    numba is missing or turned off.
    """
    n, dim = features.shape
    if not 1 <= top_k <= dim:
        raise ValueError(f"top_k must be in 1..{dim}, got {top_k}")
    out = np.empty((n, top_k), dtype=np.uint16)
    select = _compiled_select() if compiled and top_k < dim else None
    if select is not None:
        def run(lo: int) -> None:
            block = np.ascontiguousarray(to_set_basis(features[lo : lo + chunk], basis, stats), dtype=np.float32)
            select.top_k_rows(block, top_k, out[lo : lo + chunk])

        _run_chunks(run, n, chunk, usable_cores())
        return out
    import torch

    with torch.inference_mode():
        for lo in range(0, n, chunk):
            block = to_set_basis(features[lo : lo + chunk], basis, stats)
            if top_k == dim:
                idx = np.broadcast_to(np.arange(dim), block.shape)
            else:
                writable = block if block.flags.writeable else block.copy()  # torch warns on read-only memory
                idx = torch.topk(torch.from_numpy(writable), top_k, dim=1, sorted=False).indices.numpy()
            out[lo : lo + chunk] = np.sort(idx.astype(np.uint16), axis=1)  # 3x faster to sort than int64
    return out


def _compiled_select() -> Any | None:
    """The compiled select (``select_kernel``), compiled or read from numba's cache and checked once a process;
    None where numba is missing, turned off (``NO_COMPILED_ENV``) or cannot compile it (torch answers then)."""
    return numba_modules.load("stl10_similarity.index.select_kernel", _check_select, "the compiled top-K select",
                              "torch's topk")


def _check_select(select_kernel: Any) -> None:
    picked = np.empty((1, 2), np.uint16)
    select_kernel.top_k_rows(np.array([[3, 1, 2, 3]], np.float32), 2, picked)
    if picked.tolist() != [[0, 3]]:
        raise RuntimeError(f"picked {picked.tolist()}, not [[0, 3]]")


def _run_chunks(run: Callable[[int], None], n: int, chunk: int, threads: int) -> None:
    starts = range(0, n, chunk)
    if threads > 1 and n > chunk:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, starts))  # list() re-raises a worker's exception here
    else:
        for lo in starts:
            run(lo)


def minhash_signatures(sets: np.ndarray, table: np.ndarray, chunk: int = _CHUNK, threads: int | None = None,
                       ) -> np.ndarray:
    """MinHash signatures ``(n, num_perm)`` uint32 of integer token sets ``(n, K)``.

    Works chunk by chunk (never an ``n x K x num_perm`` array), folding in one set
    member at a time so the running minimum stays in cache; chunks run on ``threads``
    threads since numpy releases the GIL.
    """
    n, k = sets.shape
    out = np.empty((n, table.shape[1]), dtype=np.uint32)

    def run(lo: int) -> None:
        rows = np.asarray(sets[lo : lo + chunk], dtype=np.intp)
        acc = table[rows[:, 0]]
        for j in range(1, k):
            np.minimum(acc, table[rows[:, j]], out=acc)
        out[lo : lo + chunk] = acc

    _run_chunks(run, n, chunk, threads or usable_cores())
    return out


def datasketch_signature(token_ids: np.ndarray, num_perm: int, seed: int = SEED) -> np.ndarray:
    """The reference: datasketch's own ``MinHash.update`` over the same tokens (slow; for tests and the bench)."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME)
    for t in token_ids:
        m.update(token(t))
    return m.hashvalues
