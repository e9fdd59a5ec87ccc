"""What a query answers: its results (:class:`Match`), the query's own description and the whole result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Match:
    """One result. ``jaccard``, ``intersection``, ``union`` and ``unique_to_*`` compare the two images' top-K
    feature dimensions (the original project's set statistics); ``set_jaccard`` compares the sets the index
    holds (``params.sets``) and ``jaccard_estimate`` is its MinHash estimate."""

    rank: int
    id: int
    label: str
    class_index: int
    jaccard: float
    jaccard_estimate: float
    cosine: float
    intersection: int
    union: int
    unique_to_query: int
    unique_to_match: int
    set_jaccard: float
    path: str | None = None  # relative to the folder, for folder collections


@dataclass(frozen=True)
class QueryInfo:
    id: int | None
    label: str | None
    class_index: int | None
    image: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class QueryResult:
    query: QueryInfo
    results: list[Match]
    params: dict[str, Any]
    timing_ms: dict[str, float]
    candidates: int = 0
    # the query's pixels when it was an image of the user's (for grids); never serialised
    query_image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        query = {k: v for k, v in asdict(self.query).items() if k not in ("image", "path") or v is not None}
        return {
            "query": query,
            "results": [{k: v for k, v in asdict(m).items() if k != "path" or v is not None} for m in self.results],
            "params": self.params,
            "timing_ms": self.timing_ms,
            "candidates": self.candidates,
        }



def label_name(class_names: Sequence[str], class_index: int) -> str:
    return class_names[class_index] if 0 <= class_index < len(class_names) else "unlabeled"
