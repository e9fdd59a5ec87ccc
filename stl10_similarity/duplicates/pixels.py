"""What confirms a near-duplicate: the pictures themselves, as small grey thumbnails compared by correlation.

Global features can't tell "the same photo re-encoded, resized or cropped a little" from "another photo of the
same kind": on 32 px photos a copy resized to 60 % sits at cosine 0.80-0.95 to its original, where hundreds of
distinct photos sit too. The pixels can: a grey thumbnail, its mean taken out (brightness) and scaled to unit
norm (contrast), correlated >= 0.956 with every planted copy's (re-encoded, resized, cropped, brightened), once
the copy's crop is matched by trimming up to 1/8 of either thumbnail's sides, while distinct photos of the same
kind rarely reach the default 0.96 (docs/collections.md).
"""

from __future__ import annotations

import numpy as np

THUMB = 32  # grey thumbnail side an image is reduced to
READ_SIDE = 64  # side images are decoded at for it (folders): 2.4x faster than at 256 on 32 px photos
COMPARED = 16  # side two thumbnails are compared at
TRIMS = (0, 1, 2, 3, 4)  # pixels of the 32 px thumbnail trimmed from each side: aligns crops of up to 1/8 a side
GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma


def thumbnails(pixels: np.ndarray) -> np.ndarray:
    """``(n, 3, H, W)`` uint8 images -> ``(n, len(TRIMS), COMPARED**2)`` float32: each trimmed grey thumbnail with
    its mean removed, at unit norm (all zeros for a flat image, which then matches nothing)."""
    from PIL import Image

    out = np.zeros((len(pixels), len(TRIMS), COMPARED * COMPARED), dtype=np.float32)
    for i, image in enumerate(pixels):
        grey = Image.fromarray(np.tensordot(GREY, image.astype(np.float32), axes=1), mode="F")
        small = grey.resize((THUMB, THUMB), Image.Resampling.BOX)
        for t, trim in enumerate(TRIMS):
            box = (trim, trim, THUMB - trim, THUMB - trim)
            out[i, t] = np.asarray(small.resize((COMPARED, COMPARED), Image.Resampling.BOX, box=box)).ravel()
    out -= out.mean(axis=2, keepdims=True)
    norms = np.linalg.norm(out, axis=2, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 1e-3)
    out[np.broadcast_to(norms <= 1e-3, out.shape)] = 0.0
    return out


def pixel_similarity(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """For thumbnails ``(m, len(TRIMS), D)`` of the two sides of ``m`` pairs: the best correlation over trimming
    either side (one is taken whole, the other trimmed by each of ``TRIMS``), ``(m,)`` in [-1, 1]."""
    whole_first = np.einsum("md,mtd->mt", first[:, 0], second)
    whole_second = np.einsum("md,mtd->mt", second[:, 0], first)
    return np.maximum(whole_first.max(axis=1), whole_second.max(axis=1))
