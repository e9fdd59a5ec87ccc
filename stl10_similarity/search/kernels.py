"""The compiled half of ``compiled.py`` (numba; imported only when a process loads it): see there.

``index`` is ``compiled.Arrays.index``: (values, value_starts, shifts, flat_keys, flat_order, codes, bits, features,
components, scale); ``scratch`` one thread's (mark, votes, buf, kept), ``mark`` all zero between queries.
"""

# mypy: ignore-errors
# (numba's decorators are untyped.) Each function compiles on first call, or is read from numba's cache, and
# touches no Python object, so it runs without the GIL.

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_DOTS = {"reassoc", "contract"}  # let sums vectorise: exact (integers below 2**24) or float64 (see each)
AHEAD = 16  # the prefilters ask for the rows this far ahead of the ones they score


@intrinsic
def _prefetch(typingctx, flat, at):
    """Ask for ``flat[at]``'s cache line without waiting for it (LLVM's prefetch: a hint, never a fault)."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        byte = ir.IntType(8).as_pointer()
        address = builder.bitcast(builder.gep(array.data, [args[1]]), byte)
        i32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]),
                                              "llvm.prefetch.p0i8")
        builder.call(hint, [address, i32(0), i32(3), i32(1)])  # read, keep in every cache level, data
        return context.get_dummy_value()

    return types.void(flat, at), codegen


@njit(nogil=True, cache=True)
def prefetch_rows(matrix, rows, lo, hi):
    """Ask for every cache line of ``matrix[rows[lo:hi]]`` (C-ordered): the rows a loop reads a little later."""
    flat = matrix.reshape(-1)
    width = matrix.shape[1]
    step = max(64 // matrix.itemsize, 1)
    for i in range(lo, min(hi, len(rows))):
        start = np.int64(rows[i]) * width
        for j in range(0, width, step):
            _prefetch(flat, start + j)
        _prefetch(flat, start + width - 1)


@njit(nogil=True, cache=True)
def first_at_least(a, lo, hi, x):
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(nogil=True, cache=True)
def lower_bounds(a, starts, sizes, targets):
    """For each m, the first position in ``a[starts[m] : starts[m] + sizes[m]]`` (ascending) holding at least
    ``targets[m]``, or its end, into ``starts``. All are searched side by side, without branches, so their reads
    from memory overlap where one search at a time waits for each (the trees' keys are 256 bytes an image)."""
    last = len(a) - 1
    longest = sizes.max() if len(sizes) else 0
    while longest > 1:
        longest = 0
        for m in range(len(starts)):
            half = sizes[m] >> 1
            probe = min(starts[m] + half, last)
            starts[m] += half if a[probe] < targets[m] else 0
            sizes[m] -= half
            longest = max(longest, sizes[m])
    for m in range(len(starts)):
        if sizes[m] > 0 and a[min(starts[m], last)] < targets[m]:
            starts[m] += 1


@njit(nogil=True, cache=True)
def union(flat_order, lo, hi, active, d, exclude, mark, out):
    """Distinct rows in the active trees' ranges at depth ``d`` into ``out`` (how many: returned); ``mark`` is left
    set (1) for them. Without branches: every row is written, and the count moves past it only if it is new, so
    ``out`` needs one slot more than the distinct rows (``n + 1``)."""
    if exclude >= 0:
        mark[exclude] = 1  # seen already, so never counted
    count = 0
    for t in range(lo.shape[0]):
        if not active[t, d]:
            continue
        for p in range(lo[t, d], hi[t, d]):
            r = flat_order[p]
            out[count] = r
            count += 1 - mark[r]
            mark[r] = 1
    if exclude >= 0:
        mark[exclude] = 0
    return count


@njit(nogil=True, cache=True)
def trees_matched(flat_order, lo, hi, active, d, rows, count, votes):
    """For each of ``rows[:count]``, in how many active trees' ranges at depth ``d`` it lies (into ``votes``)."""
    for i in range(count):
        votes[rows[i]] = 0
    for t in range(lo.shape[0]):
        if active[t, d]:
            for p in range(lo[t, d], hi[t, d]):
                votes[flat_order[p]] += 1


@njit(nogil=True, cache=True, fastmath=_DOTS)
def projected(codes, r, weights):
    """Row ``r``'s projection score. Every partial sum is an integer below 2**24 (``Projection.weights``), so float32
    sums it exactly in whatever order the vector lanes take."""
    s = np.float32(0.0)
    for j in range(codes.shape[1]):
        s += np.float32(codes[r, j]) * weights[j]
    return np.int64(s)


@njit(nogil=True, cache=True, fastmath=_DOTS)
def cosines(features, rows, query):
    """Each of ``rows`` dot ``query`` in float64: each product of two float32 is exact there, so any order of the
    sum lands within ~1e-13 of numpy's (``Shard.cosine``). Eight rows side by side: their fetches from memory
    overlap, where one row at a time waits for each (2-3x faster over 200 rows of 5 KB). The last block repeats
    its last row rather than summing the rest another way, so equal rows get equal cosines (and tie by row)."""
    count = len(rows)
    out = np.empty(count)
    last = count - 1
    for i in range(0, count, 8):
        r0, r1, r2, r3 = rows[i], rows[min(i + 1, last)], rows[min(i + 2, last)], rows[min(i + 3, last)]
        r4, r5, r6, r7 = rows[min(i + 4, last)], rows[min(i + 5, last)], rows[min(i + 6, last)], rows[min(i + 7, last)]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        for j in range(features.shape[1]):
            x = np.float64(query[j])
            s0 += features[r0, j] * x
            s1 += features[r1, j] * x
            s2 += features[r2, j] * x
            s3 += features[r3, j] * x
            s4 += features[r4, j] * x
            s5 += features[r5, j] * x
            s6 += features[r6, j] * x
            s7 += features[r7, j] * x
        block = (s0, s1, s2, s3, s4, s5, s6, s7)
        for m in range(min(8, count - i)):
            out[i + m] = block[m]
    return out


@njit(nogil=True, cache=True, fastmath=_DOTS)
def projection_keys(codes, rows, count, weights, key):
    """For each of ``rows[:count]``: its :func:`projected` score above, and the row (ties: the smaller first) below,
    into ``key``; eight rows side by side, so their fetches overlap (as :func:`cosines`)."""
    prefetch_rows(codes, rows, 0, min(AHEAD, count))
    i = 0
    while i + 8 <= count:
        prefetch_rows(codes, rows, i + AHEAD, min(i + AHEAD + 8, count))
        r0, r1, r2, r3 = rows[i], rows[i + 1], rows[i + 2], rows[i + 3]
        r4, r5, r6, r7 = rows[i + 4], rows[i + 5], rows[i + 6], rows[i + 7]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
        for j in range(codes.shape[1]):
            x = weights[j]
            s0 += np.float32(codes[r0, j]) * x
            s1 += np.float32(codes[r1, j]) * x
            s2 += np.float32(codes[r2, j]) * x
            s3 += np.float32(codes[r3, j]) * x
            s4 += np.float32(codes[r4, j]) * x
            s5 += np.float32(codes[r5, j]) * x
            s6 += np.float32(codes[r6, j]) * x
            s7 += np.float32(codes[r7, j]) * x
        key[i], key[i + 1] = _keyed(np.int64(s0), r0), _keyed(np.int64(s1), r1)
        key[i + 2], key[i + 3] = _keyed(np.int64(s2), r2), _keyed(np.int64(s3), r3)
        key[i + 4], key[i + 5] = _keyed(np.int64(s4), r4), _keyed(np.int64(s5), r5)
        key[i + 6], key[i + 7] = _keyed(np.int64(s6), r6), _keyed(np.int64(s7), r7)
        i += 8
    for m in range(i, count):
        key[m] = _keyed(projected(codes, rows[m], weights), rows[m])


@njit(nogil=True, cache=True)
def shared_keys(bits, rows, count, query_bits, key):
    """For each of ``rows[:count]``: how many of the query's top-K dimensions it shares (popcount of the bitmaps'
    AND) above, the row below, into ``key``; eight rows side by side (as :func:`projection_keys`)."""
    prefetch_rows(bits, rows, 0, min(AHEAD, count))
    i = 0
    while i + 8 <= count:
        prefetch_rows(bits, rows, i + AHEAD, min(i + AHEAD + 8, count))
        r0, r1, r2, r3 = rows[i], rows[i + 1], rows[i + 2], rows[i + 3]
        r4, r5, r6, r7 = rows[i + 4], rows[i + 5], rows[i + 6], rows[i + 7]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.int64(0)
        for w in range(bits.shape[1]):
            x = query_bits[w]
            s0 += popcount(bits[r0, w] & x)
            s1 += popcount(bits[r1, w] & x)
            s2 += popcount(bits[r2, w] & x)
            s3 += popcount(bits[r3, w] & x)
            s4 += popcount(bits[r4, w] & x)
            s5 += popcount(bits[r5, w] & x)
            s6 += popcount(bits[r6, w] & x)
            s7 += popcount(bits[r7, w] & x)
        key[i], key[i + 1], key[i + 2], key[i + 3] = _keyed(s0, r0), _keyed(s1, r1), _keyed(s2, r2), _keyed(s3, r3)
        key[i + 4], key[i + 5], key[i + 6], key[i + 7] = _keyed(s4, r4), _keyed(s5, r5), _keyed(s6, r6), _keyed(s7, r7)
        i += 8
    for m in range(i, count):
        s = np.int64(0)
        for w in range(bits.shape[1]):
            s += popcount(bits[rows[m], w] & query_bits[w])
        key[m] = _keyed(s, rows[m])


@njit(nogil=True, cache=True)
def _keyed(score, row):
    """An integer score (|score| < 2**31) and its row in one int64 that orders as (score, then the smaller row)."""
    return (score << np.int64(32)) | np.int64(0xFFFFFFFF - row)


@njit(nogil=True, cache=True)
def weights_of(components, scale, levels, query):
    """``Projection.weights``: the query along each direction times its scale, rounded to ``levels`` steps of the
    largest magnitude."""
    dims = components.shape[0]
    w = cosines(components, np.arange(dims), query)
    top = 0.0
    for i in range(dims):
        w[i] *= np.float64(scale[i])
        top = max(top, abs(w[i]))
    out = np.zeros(dims, np.float32)
    if top > 0:
        factor = levels / top
        for i in range(dims):
            out[i] = np.float32(np.rint(w[i] * factor))
    return out


@njit(nogil=True, cache=True)
def popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(nogil=True, cache=True)
def largest(key, rows, keep):
    """The ``rows`` of the ``keep`` largest ``key`` values (distinct): a histogram of the keys' top bits finds the
    bucket the cut falls in, and only that bucket is sorted (a quarter of the time ``np.partition`` took)."""
    low, high = key.min(), key.max()
    shift = np.int64(0)
    while ((high - low) >> shift) >= 4096:
        shift += 1
    counts = np.zeros(4096, np.int64)
    for v in key:
        counts[(v - low) >> shift] += 1
    cut, above = 4095, 0
    while above + counts[cut] < keep:
        above += counts[cut]
        cut -= 1
    out = np.empty(keep, np.int64)
    edge = np.empty(counts[cut], np.int64)
    m = e = 0
    for i in range(len(key)):
        b = (key[i] - low) >> shift
        if b > cut:
            out[m] = rows[i]
            m += 1
        elif b == cut:
            edge[e] = i
            e += 1
    order = np.argsort(-key[edge])  # keys are distinct: the order is the keys'
    for j in range(keep - m):
        out[m + j] = rows[edge[order[j]]]
    return out


@njit(nogil=True, cache=True)
def best_first(values, rows, wanted):
    """The positions of the ``wanted`` largest ``values``, largest first, ties to the smaller row, kept in a short
    sorted list: a few comparisons per value, where sorting 800 took 0.05 ms."""
    count = len(values)
    wanted = min(wanted, count)
    if wanted > 64:
        by_row = np.argsort(rows)
        return by_row[np.argsort(-values[by_row], kind="mergesort")[:wanted]]
    top = np.empty(wanted, np.int64)
    filled = 0
    for i in range(count):
        v, r = values[i], rows[i]
        if filled == wanted and not _before(v, r, values[top[wanted - 1]], rows[top[wanted - 1]]):
            continue
        j = filled if filled < wanted else wanted - 1
        while j > 0 and _before(v, r, values[top[j - 1]], rows[top[j - 1]]):
            top[j] = top[j - 1]
            j -= 1
        top[j] = i
        filled = min(filled + 1, wanted)
    return top


@njit(nogil=True, cache=True)
def _before(value, row, other_value, other_row):
    return value > other_value or (value == other_value and row < other_row)


@njit(nogil=True, cache=True)
def rerank(index, tree_shift, n, levels, budget, overshoot, keep, wanted, by_projection, signature, exclude, query,
           topk, scratch):
    """rerank for one query (see ``compiled.py``): the ``wanted`` best rows by exact cosine among the prefilter's
    ``keep`` best of the forest's pool for ``budget``, their cosines, and the pool's size (-1: a signature value
    missing from the token table)."""
    values, value_starts, shifts, flat_keys, flat_order, codes, bits, features, components, scale = index
    mark, votes, buf, kept_buf = scratch  # int8, int32, int32, int32: 13 bytes an image
    trees, depth = len(value_starts[:-1]) // len(shifts), len(shifts)
    # --- per tree and depth 1..depth, the range of codes sharing the query's prefix (index d - 1 is depth d)
    lo = np.empty((trees, depth + 1), np.int64)
    hi = np.empty((trees, depth + 1), np.int64)
    code = np.empty(trees, np.uint64)
    for t in range(trees):
        code[t] = np.uint64(t) << np.uint64(tree_shift)
        for j in range(depth):
            p = t * depth + j
            a, b = value_starts[p], value_starts[p + 1]
            at = first_at_least(values, a, b, signature[p])
            if at == b or values[at] != signature[p]:
                return np.empty(0, np.int64), np.empty(0), -1  # not in the token table: the caller says so
            code[t] |= np.uint64(at - a) << np.uint64(shifts[j])
    # every tree's two bounds at one depth are searched together; a deeper prefix's range lies inside the
    # shallower one's
    starts = np.empty(2 * trees, np.int64)
    sizes = np.empty(2 * trees, np.int64)
    targets = np.empty(2 * trees, np.uint64)
    for t in range(trees):
        lo[t, 0], hi[t, 0] = t * n, (t + 1) * n
    for d in range(1, depth + 1):
        below = (np.uint64(1) << np.uint64(shifts[d - 1])) - np.uint64(1)
        for t in range(trees):
            starts[t] = starts[trees + t] = lo[t, d - 1]
            sizes[t] = sizes[trees + t] = hi[t, d - 1] - lo[t, d - 1]
            targets[t] = code[t] & ~below
            targets[trees + t] = (targets[t] | below) + np.uint64(1)
        lower_bounds(flat_keys, starts, sizes, targets)
        for t in range(trees):
            lo[t, d], hi[t, d] = starts[t], starts[trees + t]
    mine = 1 if exclude >= 0 else 0  # an indexed query matches its own band at every depth
    active = np.zeros((trees, depth + 1), np.bool_)
    start = 1
    for d in range(depth, 0, -1):
        total = 0
        for t in range(trees):
            size = hi[t, d] - lo[t, d] - mine
            active[t, d] = size > 0
            total += size
        if total >= budget and start == 1 and d > 1:
            start = d
    # --- the deepest depth whose union reaches the budget (depth 1 whatever it holds)
    count = 0
    pool_size = 0
    for d in range(start, 0, -1):
        count = union(flat_order, lo, hi, active, d, exclude, mark, buf)
        if count < budget and d > 1:
            for i in range(count):
                mark[buf[i]] = 0
            continue
        pool_size = count
        if count > overshoot * budget:
            # every key of the depth below, then this depth's new keys found in the most trees (ties: row)
            trees_matched(flat_order, lo, hi, active, d, buf, count, votes)
            kept = 0
            if d < depth:
                for t in range(trees):
                    if not active[t, d + 1]:
                        continue
                    for p in range(lo[t, d + 1], hi[t, d + 1]):
                        r = flat_order[p]
                        if r != exclude and mark[r] == 1:
                            mark[r] = 2
                            kept_buf[kept] = r
                            kept += 1
            fresh = np.empty(count - kept, np.int64)
            m = 0
            for i in range(count):
                r = buf[i]
                if mark[r] == 1:
                    fresh[m] = (np.int64(trees - votes[r]) << np.int64(40)) | np.int64(r)
                    m += 1
                mark[r] = 0
            fresh.sort()
            take = max(budget - kept, 0)
            for i in range(min(take, m)):
                kept_buf[kept + i] = fresh[i] & ((np.int64(1) << np.int64(40)) - 1)
            pool_size = kept + min(take, m)
            for i in range(pool_size):
                buf[i] = kept_buf[i]
        else:
            for i in range(count):
                mark[buf[i]] = 0
        break
    # --- the prefilter's integer scores, and the ``keep`` best (ties by the smaller row)
    key = np.empty(pool_size, np.int64)
    if by_projection:
        projection_keys(codes, buf, pool_size, weights_of(components, scale, levels, query), key)
    else:
        query_bits = np.zeros(bits.shape[1], np.uint64)
        for d in topk:
            query_bits[d >> 6] |= np.uint64(1) << np.uint64(d & 63)
        shared_keys(bits, buf, pool_size, query_bits, key)
    picked = buf[:pool_size].astype(np.int64) if pool_size <= keep else largest(key, buf, keep)
    # --- exact cosines; the best first, ties by the smaller row
    cos = cosines(features, picked, query)
    order = best_first(cos, picked, wanted)
    return picked[order], cos[order], pool_size


@njit(nogil=True, cache=True)
def rerank_many(index, tree_shift, n, levels, budget, overshoot, keep, wanted, by_projection, signatures, excludes,
                queries, topks, scratch):
    """:func:`rerank` for each query in turn: rows ``(queries, wanted)`` (-1 past a query's results), their
    cosines, and each pool's size."""
    count = len(signatures)
    rows = np.full((count, wanted), -1, np.int64)
    cosines = np.zeros((count, wanted))
    pools = np.empty(count, np.int64)
    for b in range(count):
        got, cos, pool = rerank(index, tree_shift, n, levels, budget, overshoot, keep, wanted, by_projection,
                                signatures[b], excludes[b], queries[b], topks[b], scratch)
        rows[b, : len(got)] = got
        cosines[b, : len(got)] = cos
        pools[b] = pool
    return rows, cosines, pools
