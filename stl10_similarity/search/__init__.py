"""Stage 4: answering "which images look like this one?" over a loaded index.

Methods:
    auto          exact while the collection has at most ``SCAN_LIMIT`` images (a scan costs a few ms there and
                  is always right), rerank beyond (the default).
    forest        candidates from every tree of the LSH forest, deepest shared prefix first,
                  until the candidate budget is met; ordered by estimated Jaccard (MinHash).
    rerank        the same pool; the ``candidates`` whose top-K dimensions overlap the query's most are ordered by
                  exact cosine similarity of the stored features.
    exact         brute-force cosine similarity over all stored features (the baseline).
    forest-query  datasketch's own ``MinHashLSHForest.query(m, k)`` (stops at the first k keys it
                  meets), ordered by estimated Jaccard: kept to show what the gathering above buys.

Every method widens its search until it has ``min(k, N - 1)`` results (never fewer) and never
returns the query itself.

The seam: a :class:`Searcher` runs every method once, over *parts* (a collection's shards; an unsharded one is
one part). A :class:`Shard` answers the per-part questions (prefix ranges, the keys at a depth, scores of its
rows, its exact top, descriptions) for its own rows; :class:`LocalParts` asks its shards in this process and
``search.ray_parts.RayParts`` asks one Ray actor per shard. Shards' rows are disjoint, so gathering at a depth chosen
from the summed counts gives exactly the candidates one unsharded forest would: a sharded collection answers
``auto``, ``rerank``, ``forest`` and ``exact`` as one index with the same parameters (``forest-query``, the
datasketch object's own walk, is asked per shard). Every method is ``search(q, k) -> rows, scores, examined``,
registered in ``METHOD_FUNCTIONS``.
"""

from __future__ import annotations

from stl10_similarity.search.methods import METHOD_FUNCTIONS
from stl10_similarity.search.results import Match, QueryInfo, QueryResult, label_name
from stl10_similarity.search.searcher import OVERSHOOT, Searcher
from stl10_similarity.search.shard import LocalParts, Parts, QueryVector, Shard

__all__ = ["METHOD_FUNCTIONS", "OVERSHOOT", "LocalParts", "Match", "Parts", "QueryInfo", "QueryResult", "QueryVector", "Searcher",
           "Shard", "label_name"]
