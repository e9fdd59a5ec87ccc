"""The benchmark scripts stay working code: each imports (its module level runs, its own imports resolve against
today's library) and has a ``main``; the numbers in docs/ come from them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "common.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_each_benchmark_imports_and_has_a_main(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"


def test_build_stages_times_every_stage_of_a_build(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from build_stages import stages

    from stl10_similarity.synthetic import synthetic_features

    report = stages(synthetic_features(600, 1)[0])
    assert list(report)[0] == "statistics" and "assigning the nearest centroids" in report and len(report) == 9
    assert all(s["seconds"] >= 0 and s["page_faults"] >= 0 for s in report.values())
