"""Which runner embeds: the engine's name to a :class:`~stl10_similarity.ingest.runners.Runner`.

Above both runners, so that ``runners.py`` (the seam and the local runner) and ``ray_runner.py`` (which builds on
the seam) never import each other.
"""

from __future__ import annotations

from stl10_similarity.ingest.runners import LocalRunner, Runner
from stl10_similarity.params import EngineParams


def runner_for(engine: EngineParams, pipelined: bool | None = None) -> Runner:
    """The runner ``engine`` names: ``local`` (``pipelined`` as :class:`LocalRunner` takes it) or ``ray``."""
    if engine.engine == "ray":
        from stl10_similarity.ingest.ray_runner import RayRunner

        return RayRunner(engine.address, engine.actors, engine.gpus_per_actor)
    return LocalRunner(pipelined)
