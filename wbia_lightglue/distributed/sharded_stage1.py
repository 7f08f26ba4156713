"""Stage 1 over an index sharded across Ray actors: the same scores as one ``engine.stage1`` index.

LNBNN normalises by the (K+1)-th neighbour over the whole database, so a :class:`Stage1Shard` (an actor holding
the index of a part of the database) returns each query descriptor's nearest neighbours (distances, annotations,
keypoints) rather than scores; :class:`ShardedIndex` (on the driver) merges them
(``engine.stage1.merge_neighbours``) and votes once (``score_neighbours``): the scores of one index over the whole
database (with exact search, the default below ``AUTO_IVF_VECTORS`` vectors a shard). Used by
``ray_runner.RaySource`` for identify's database and evaluate's comparison groups.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, List, Mapping, Sequence, Tuple

import numpy as np

from ..engine.config import Config
from ..engine.stage1 import Neighbours, Stage1Scores, build_descriptor_index, merge_neighbours, score_neighbours

logger = logging.getLogger("wbia_lightglue")

UNAVAILABLE_SECONDS = 300  # how long a driver asks again for an actor that is being restarted
SPATIAL_TOP = 50  # as Stage1Index.search: candidates re-scored by the spatial check


class Stage1Shard:
    """An actor holding the stage-1 index of a part of the database (``keys``, in the driver's order)."""

    def __init__(self, config: Config, keys: Sequence[str], features: Sequence[Mapping[str, Any]]):
        self.index = build_descriptor_index(list(keys), list(features), config)
        position = {key: i for i, key in enumerate(keys)}
        self.position = np.asarray([position.get(key, -1) for key in self.index.slot_keys] or [-1], np.int64)

    def neighbours(self, features: Mapping[str, Any], fetch: int) -> Neighbours:
        """The query descriptors' ``fetch`` nearest here, as positions in this shard's ``keys``."""
        table = self.index.neighbours(features, fetch)
        slots = np.where(table.slots >= 0, self.position[np.maximum(table.slots, 0)], -1)
        return Neighbours(table.dist, slots, table.xy)


def _get_again_while_unavailable(submit: Callable[[], List[Any]]) -> List[Any]:
    """``ray.get`` of the calls ``submit`` makes, made again while an actor is restarting (pure reads only).

    Ray retries a call on an actor that died (``max_task_retries``), but one it could not reach while the
    actor's node was being declared dead fails with ActorUnavailableError ("may or may not have been executed").
    """
    import ray
    from ray.exceptions import ActorUnavailableError

    deadline = time.monotonic() + UNAVAILABLE_SECONDS
    while True:
        try:
            return list(ray.get(submit()))
        except ActorUnavailableError as exc:
            if time.monotonic() > deadline:
                raise
            logger.info("a stage-1 shard is unavailable (%s); asking again", str(exc).split(":")[0])
            time.sleep(1.0)


class ShardedIndex:
    """A stage-1 index of ``keys`` over ``count`` :class:`Stage1Shard` actors spread over the nodes.

    ``search`` gives the scores ``Stage1Index.search`` of one index over all of ``keys`` gives: each shard returns
    its nearest neighbours, the driver merges them and votes once (exact search; see the module docstring).
    The actors hold their part of ``features``; the driver holds the objects they were built from, so a shard
    restarted after its node died builds the same index again.
    """

    def __init__(self, shard: Any, config: Config, keys: Sequence[str], features: Sequence[Mapping[str, Any]],
                 count: int):
        import ray

        self.config, self.keys = config, list(keys)
        self.slot_of = {key: slot for slot, key in enumerate(self.keys)}
        self.k = int(config["shortlist_knn"])
        self.shards: List[Tuple[Any, int]] = []  # (actor, offset of its keys in keys)
        self._inputs: List[Any] = []  # ObjectRefs of each shard's features (kept for restarts)
        bounds = np.linspace(0, len(self.keys), max(1, min(count, len(self.keys))) + 1).astype(int)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            feats = ray.put(list(features[start:stop]))
            actor = shard.options(scheduling_strategy="SPREAD").remote(config, self.keys[start:stop], feats)
            self.shards.append((actor, int(start)))
            self._inputs.append(feats)

    def search(self, features: Mapping[str, Any], exclude: Sequence[str] = ()) -> Stage1Scores:
        import ray

        if len(features["descriptors"]) == 0 or not self.shards:
            return Stage1Scores({key: 0.0 for key in self.keys}, 0)
        fetch = self.k + 1 + (self.k + 1 if any(key in self.slot_of for key in exclude) else 0)  # as Stage1Index
        ref = ray.put(features)
        shards = [shard for shard, _ in self.shards]
        tables = _get_again_while_unavailable(lambda: [shard.neighbours.remote(ref, fetch) for shard in shards])
        tables = [Neighbours(t.dist, np.where(t.slots >= 0, t.slots + offset, -1), t.xy)
                  for t, (_, offset) in zip(tables, self.shards)]
        return score_neighbours(merge_neighbours(tables, fetch), features, self.keys, self.slot_of, self.keys, self.k,
                                list(exclude), bool(self.config["shortlist_spatial"]), SPATIAL_TOP)

    def close(self) -> None:
        import ray

        for shard, _ in self.shards:
            ray.kill(shard)
        self.shards, self._inputs = [], []
