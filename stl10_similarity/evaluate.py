"""Retrieval quality: pure metric functions and the side-by-side evaluation of search methods.

Class-based metrics treat a neighbour as relevant when it shares the query's label (the query itself
is never among its own results; unlabelled queries are left out of class metrics). Fidelity metrics
compare a method's top-k with the exact top-k by cosine (features) and by Jaccard (top-K sets), counting
ties at the k-th score as hits, since any of the tied items is an equally correct answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from stl10_similarity.errors import InputError
from stl10_similarity.index.sets import set_intersections
from stl10_similarity.params import DIM, EvaluateParams
from stl10_similarity.progress import SILENT, Progress
from stl10_similarity.session import Session

# ---------------------------------------------------------------- metrics (pure)


def precision_at_k(retrieved_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Mean fraction of each query's k results that share its label. Shapes ``(Q, k)``, ``(Q,)``."""
    if retrieved_labels.size == 0:
        return float("nan")
    return float((retrieved_labels == query_labels[:, None]).mean())


def precision_curve(retrieved_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """Precision@j for j = 1..k: ``(k,)``."""
    hits = (retrieved_labels == query_labels[:, None]).astype(np.float64)
    return hits.cumsum(axis=1).mean(axis=0) / np.arange(1, hits.shape[1] + 1)


def average_precision_at_k(relevant: np.ndarray, total_relevant: int) -> float:
    """AP@k of one ranked list: sum of precision@i at each relevant rank i, divided by min(k, R).

    ``relevant`` is a boolean array in rank order; ``total_relevant`` (R) counts relevant items in the
    collection, query excluded. R = 0 gives 0.0.
    """
    k = len(relevant)
    denom = min(k, total_relevant)
    if denom == 0:
        return 0.0
    rel = np.asarray(relevant, dtype=np.float64)
    precisions = rel.cumsum() / np.arange(1, k + 1)
    return float((precisions * rel).sum() / denom)


def knn_vote(labels: np.ndarray) -> int:
    """Majority label of a ranked list; ties go to the class whose first vote ranks highest."""
    values, first, counts = np.unique(labels, return_index=True, return_counts=True)
    best = counts.max()
    tied = values[counts == best]
    return int(tied[np.argmin(first[counts == best])])


def tie_aware_recall(retrieved_scores: np.ndarray, kth_best: float, k: int, tol: float = 1e-5) -> float:
    """Fraction of the k results scoring at least the exact k-th best score.

    ``tol`` absorbs float32 rounding: matrix products and matrix-vector products sum in different orders.
    """
    if k == 0:
        return float("nan")
    return float(np.count_nonzero(retrieved_scores >= kth_best - tol) / k)


# ---------------------------------------------------------------- exact references


def kth_best_scores(scores: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k-th largest score with each row's excluded column masked out."""
    scores = scores.copy()
    scores[np.arange(len(scores)), exclude] = -np.inf
    k = min(k, scores.shape[1] - 1)
    return -np.partition(-scores, k - 1, axis=1)[:, k - 1]


def set_matrix(topk: np.ndarray, dim: int = DIM) -> np.ndarray:
    """Top-K sets as a dense 0/1 float32 matrix ``(n, dim)``."""
    dense = np.zeros((len(topk), dim), dtype=np.float32)
    np.put_along_axis(dense, np.asarray(topk, dtype=np.intp), 1.0, axis=1)
    return dense


# ---------------------------------------------------------------- evaluation


@dataclass
class MethodReport:
    name: str
    precision_at_k: float
    map_at_k: float
    knn_accuracy: float
    recall_vs_cosine: float
    recall_vs_jaccard: float
    p50_ms: float
    p99_ms: float
    mean_candidates: float
    precision_curve: list[float] = field(default_factory=list)


@dataclass
class EvaluationReport:
    n: int
    queries: int
    k: int
    candidates: int
    params: dict[str, Any]
    methods: list[MethodReport]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_queries(n: int, queries: int | None, seed: int = 0) -> np.ndarray:
    """All ids (``queries`` None or >= n) or a seeded sample, sorted."""
    if queries is None or queries >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=queries, replace=False))


def evaluate(session: Session, params: EvaluateParams = EvaluateParams(), progress: Progress = SILENT,
             query_ids: np.ndarray | None = None) -> EvaluationReport:
    """Run every method on every query through :meth:`Session.query` and score them side by side.

    Args:
        session: an opened collection.
        params: methods, k, candidate budget and how many queries (a seeded sample).
        progress: one bar per method.
        query_ids: the queries' image ids, overriding ``params.queries`` and ``params.seed``.
    """
    index = session.index
    n = index.n
    if n < 2:
        raise InputError(f"evaluating needs at least 2 images; the collection has {n}")
    # rows from here on (image ids differ from rows once images left a folder collection)
    query_ids = choose_queries(n, params.queries, params.seed) if query_ids is None else index.rows_of(query_ids)
    k = min(params.k, n - 1)
    labels = np.asarray(index.labels)
    q_labels = labels[query_ids]
    class_counts = np.bincount(labels[labels >= 0], minlength=len(index.class_names))
    kth_cos, kth_jac = _exact_thresholds(index, query_ids, k)

    reports = []
    for method in params.methods:  # many queries: rerank runs compiled
        session.prepare_compiled(method, params.candidates)
    for method in params.methods:
        ids = np.empty((len(query_ids), k), dtype=np.int64)
        times = np.empty(len(query_ids))
        examined = np.empty(len(query_ids))
        bar = progress.bar(len(query_ids), method, unit="q")
        for row, qid in enumerate(query_ids):
            result = session.query(index.id_of(qid), k=k, method=method, candidates=params.candidates)
            times[row] = result.timing_ms["search"] / 1e3
            examined[row] = result.candidates
            ids[row] = index.rows_of(np.array([m.id for m in result.results], dtype=np.int64))
            bar.update(1)
        bar.close()
        reports.append(_score(method, index, query_ids, ids, labels, q_labels, class_counts, kth_cos, kth_jac,
                              times, examined))
    return EvaluationReport(n=n, queries=len(query_ids), k=k, candidates=params.candidates,
                            params=dict(index.params), methods=reports)


def _exact_thresholds(index: Any, query_ids: np.ndarray, k: int, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-th best cosine and Jaccard per query (the references for recall)."""
    feats = np.asarray(index.features)
    sets = set_matrix(np.asarray(index.topk), feats.shape[1])
    size = index.topk.shape[1]
    kth_cos = np.empty(len(query_ids))
    kth_jac = np.empty(len(query_ids))
    for lo in range(0, len(query_ids), batch):
        q = query_ids[lo : lo + batch]
        kth_cos[lo : lo + batch] = kth_best_scores(feats[q] @ feats.T, q, k)
        inter = sets[q] @ sets.T
        kth_jac[lo : lo + batch] = kth_best_scores(inter / (2 * size - inter), q, k)
    return kth_cos, kth_jac


def _score(method: str, index: Any, query_ids: np.ndarray, ids: np.ndarray, labels: np.ndarray,
           q_labels: np.ndarray, class_counts: np.ndarray, kth_cos: np.ndarray, kth_jac: np.ndarray,
           times: np.ndarray, examined: np.ndarray) -> MethodReport:
    k = ids.shape[1]
    labelled = q_labels >= 0
    got = labels[ids]
    aps = [average_precision_at_k(got[r] == q_labels[r], int(class_counts[q_labels[r]]) - 1)
           for r in np.flatnonzero(labelled)]
    knn = [knn_vote(got[r]) == q_labels[r] for r in np.flatnonzero(labelled)]
    feats = np.asarray(index.features)
    topk = np.asarray(index.topk)
    size = topk.shape[1]
    rec_cos, rec_jac = [], []
    for r, qid in enumerate(query_ids):
        cos = feats[ids[r]] @ feats[qid]
        inter = set_intersections(topk[qid], topk[ids[r]], feats.shape[1])
        rec_cos.append(tie_aware_recall(cos, kth_cos[r], k))
        rec_jac.append(tie_aware_recall(inter / (2 * size - inter), kth_jac[r], k))
    return MethodReport(
        name=method,
        precision_at_k=round(precision_at_k(got[labelled], q_labels[labelled]), 4),
        map_at_k=round(float(np.mean(aps)) if aps else float("nan"), 4),
        knn_accuracy=round(float(np.mean(knn)) if knn else float("nan"), 4),
        recall_vs_cosine=round(float(np.mean(rec_cos)), 4),
        recall_vs_jaccard=round(float(np.mean(rec_jac)), 4),
        p50_ms=round(float(np.percentile(times, 50) * 1e3), 3),
        p99_ms=round(float(np.percentile(times, 99) * 1e3), 3),
        mean_candidates=round(float(examined.mean()), 1),
        precision_curve=[round(float(v), 4) for v in precision_curve(got[labelled], q_labels[labelled])]
        if labelled.any() else [],
    )


def plot_precision(report: EvaluationReport, path: Any = None) -> bytes:
    """Precision@j for j = 1..k per method, as PNG bytes (also written atomically to ``path`` if given)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from stl10_similarity.grid import write_picture

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for m in report.methods:
        ax.plot(range(1, len(m.precision_curve) + 1), m.precision_curve, marker="o", ms=3, label=m.name)
    ax.set_xlabel("k")
    ax.set_ylabel("precision@k (same class)")
    ax.set_title(f"{report.queries} queries over {report.n} images")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    if path is not None:
        write_picture(path, buffer.getvalue())
    return buffer.getvalue()
