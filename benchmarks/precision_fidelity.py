#!/usr/bin/env python3
"""How much reduced precision changes answers, on a whole collection.

    python benchmarks/precision_fidelity.py FP32_CACHE OTHER_CACHE

Both caches hold features of the same images (`stl10sim extract --precision fp32` and, say, `--precision
bf16`). Prints mean cosine between the two features of each image, mean Jaccard of their top-100 sets
(centred), the overlap of each image's exact top-10 neighbours, and class precision@10 of each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from common import collection_arrays  # benchmarks/ is on the path when run as a script

from stl10_similarity.extract_bench import fidelity


def main(reference: Path, other: Path) -> None:
    a, labels = collection_arrays(reference, "features", "labels")
    (b,) = collection_arrays(other, "features")
    assert a.shape == b.shape, "the two caches hold different collections"

    def precision_at_10(x: np.ndarray) -> float:
        scores = x @ x.T
        np.fill_diagonal(scores, -np.inf)
        top = np.argpartition(-scores, 9, axis=1)[:, :10]
        return float((labels[top] == labels[:, None]).mean())

    print(json.dumps({"n": len(a), **fidelity(a, b), "precision_at_10_reference": round(precision_at_10(a), 4),
                      "precision_at_10_other": round(precision_at_10(b), 4)}, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
