"""Each row's K largest values by one compiled radix select (numba; loaded only by builds large enough to pay
for it: ``signatures.top_k_sets``). Ties go to the smaller dimension, so the choice is the same on every CPU.
"""

# mypy: ignore-errors
# (numba's decorators are untyped.) Runs without the GIL, so a build's threads share the rows.

import numpy as np
from numba import njit

_SIGN = np.uint32(0x80000000)


@njit(nogil=True, cache=True)
def top_k_rows(block, k, out):
    """For each row of ``block`` (float32, C-ordered): the dimensions of its ``k`` largest values, ascending, into
    ``out`` (uint16). Each value's bits become an unsigned key in the same order; 11, 11 and 10 bits of the keys
    narrow, pass by pass, to the k-th largest, then one pass takes every larger key and the first equal ones
    (``need`` of them: ties to the smaller dimension)."""
    n, dim = block.shape
    bits = block.view(np.uint32)
    keys = np.empty(dim, np.uint32)
    counts = np.zeros(2048, np.int64)
    cand = np.empty(dim, np.int64)
    for i in range(n):
        for j in range(dim):
            b = bits[i, j] if bits[i, j] != _SIGN else np.uint32(0)  # -0.0 equals 0.0
            keys[j] = ~b if b & _SIGN else b | _SIGN
        need, m = k, dim  # how many of the k are still to be found among the candidates
        for j in range(dim):
            cand[j] = j
        for shift, mask in ((21, 0x7FF), (10, 0x7FF), (0, 0x3FF)):
            sh, mk = np.uint32(shift), np.uint32(mask)
            for c in range(m):
                counts[(keys[cand[c]] >> sh) & mk] += 1
            digit = mask
            while counts[digit] < need:
                need -= counts[digit]
                digit -= 1
            for c in range(m):
                counts[(keys[cand[c]] >> sh) & mk] = 0
            kept = 0
            for c in range(m):
                if (keys[cand[c]] >> sh) & mk == digit:
                    cand[kept] = cand[c]
                    kept += 1
            m = kept
            if m == need:  # every candidate is among the k
                break
        cut = keys[cand[0]]  # the k-th largest key: the least candidate's (all candidates are equal after 3 passes)
        for c in range(1, m):
            cut = min(cut, keys[cand[c]])
        o = 0
        for j in range(dim):
            if keys[j] > cut:
                out[i, o] = j
                o += 1
            elif keys[j] == cut and need > 0:
                out[i, o] = j
                o += 1
                need -= 1
