"""Metric functions against hand-computed values, and evaluation on data whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import invoke

from stl10_similarity import evaluate as ev
from stl10_similarity.index import index_in_memory
from stl10_similarity.params import EvaluateParams, IndexParams
from stl10_similarity.session import Session


def test_precision_at_k_by_hand():
    retrieved = np.array([[1, 1, 2, 3], [0, 0, 0, 0]])
    assert ev.precision_at_k(retrieved, np.array([1, 0])) == pytest.approx((2 / 4 + 4 / 4) / 2)
    assert ev.precision_curve(retrieved, np.array([1, 0])).tolist() == pytest.approx([1.0, 1.0, (2 / 3 + 1) / 2, 0.75])


def test_average_precision_by_hand():
    # relevant at ranks 1 and 3 of 4, 5 relevant in the collection: (1/1 + 2/3) / min(4, 5)
    assert ev.average_precision_at_k(np.array([1, 0, 1, 0], bool), 5) == pytest.approx((1 + 2 / 3) / 4)
    # only 2 relevant exist and both are found first: perfect
    assert ev.average_precision_at_k(np.array([1, 1, 0, 0], bool), 2) == pytest.approx(1.0)
    assert ev.average_precision_at_k(np.array([0, 0], bool), 0) == 0.0
    assert ev.average_precision_at_k(np.array([0, 1], bool), 3) == pytest.approx(0.5 / 2)


def test_knn_vote_breaks_ties_by_rank():
    assert ev.knn_vote(np.array([2, 1, 1, 2, 3])) == 2  # 2 and 1 tie at two votes; 2 ranks first
    assert ev.knn_vote(np.array([4, 1, 1])) == 1


def test_tie_aware_recall_and_thresholds():
    assert ev.tie_aware_recall(np.array([0.9, 0.5, 0.5]), 0.5, 3) == 1.0
    assert ev.tie_aware_recall(np.array([0.9, 0.4, 0.1]), 0.5, 3) == pytest.approx(1 / 3)
    scores = np.array([[9.0, 5.0, 7.0, 1.0]])
    assert ev.kth_best_scores(scores, np.array([0]), 2).tolist() == [5.0]  # the query's own 9 is masked


def clustered(n_per: int = 40, classes: int = 5, dim: int = 1280, seed: int = 0):
    """Non-negative, sparse-ish clusters: each class lights up its own block of dimensions."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((classes, dim), np.float32)
    for c in range(classes):
        centres[c, c * 200 : c * 200 + 150] = rng.uniform(1, 2, 150)
    labels = np.repeat(np.arange(classes), n_per)
    x = centres[labels] + rng.uniform(0, 0.3, (len(labels), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels.astype(np.int16)


def test_separated_clusters_are_retrieved_perfectly():
    x, labels = clustered()
    idx = index_in_memory(x, labels, [f"c{i}" for i in range(5)], IndexParams(top_k=50, num_perm=64, trees=8))
    report = ev.evaluate(Session(idx, {}), EvaluateParams(k=10, candidates=50, methods=("forest", "rerank", "exact")),
                         query_ids=np.arange(len(x)))
    exact = report.methods[2]
    assert exact.precision_at_k == 1.0 and exact.map_at_k == 1.0 and exact.knn_accuracy == 1.0
    assert exact.recall_vs_cosine == 1.0
    for m in report.methods:
        assert m.precision_at_k >= 0.95, m
        assert len(m.precision_curve) == 10


def test_evaluate_cli_table_and_json(built_cache, tmp_path):
    png = tmp_path / "p.png"
    text = invoke("-q", "evaluate", "--queries", "30", "-k", "5", "--png", str(png), "--cache-dir", str(built_cache))
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[1].split()[:4] == ["method", "P@k", "mAP@k", "kNN"]
    assert [line.split()[0] for line in lines[3:]] == ["forest", "rerank", "auto", "exact"]
    assert png.is_file()
    doc = json.loads(invoke("-q", "evaluate", "--queries", "all", "--json", "--method", "exact",
                            "--cache-dir", str(built_cache)).stdout)
    assert doc["queries"] == 100 and doc["k"] == 10
    assert doc["methods"][0]["name"] == "exact" and doc["methods"][0]["recall_vs_cosine"] == 1.0


@pytest.mark.parametrize("value", ["0", "many", "-3"])
def test_evaluate_rejects_bad_query_counts(built_cache, value):
    from click.testing import CliRunner

    from stl10_similarity.cli import main

    result = CliRunner().invoke(main, ["evaluate", "--queries", value, "--cache-dir", str(built_cache)])
    assert result.exit_code == 2 and "--queries" in result.stderr
