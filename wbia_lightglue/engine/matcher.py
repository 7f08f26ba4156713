"""Exact, batched one-vs-many LightGlue.

Upstream LightGlue matches one pair per forward. Its own batching pads nothing (all pairs must have the
same keypoint counts) and takes one early-stopping decision for the whole batch. This module runs the
same network (upstream modules and weights, our forward) on one query against many database feature
sets at once and reproduces the single-pair forward for every pair:

* both sides are padded to a common length; a per-point ``alive`` mask is honoured as a key-padding
  mask in self- and cross-attention and in the assignment (dead rows/columns can never match);
* point pruning clears ``alive`` bits of one pair only, and pruned points are compacted away when the
  batch's longest side shrinks, so nothing leaks between pairs;
* early stopping is decided per pair with upstream's rule; finished pairs are scored with the
  assignment head of the layer they stopped at and dropped from the batch.

The query's input projection, positional encoding and first self-attention are computed once.

Optional score screening (``MatchSettings.screen = (layer, min_score)``) adds one exit upstream does not have: after
``layer`` layers, a pair whose confidence sum is below ``min_score`` is scored there, exactly as
upstream's forward cut at that layer would score it. In one-vs-many identification most pairs are
different animals, and they are the ones it stops early.

This module is over 400 lines because it is one readable model file, as upstream's ``lightglue.py`` is: the
batched forward, its masks and its exits only make sense read together.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .device import OutOfDeviceMemory, release_device_memory
from .match_types import FeatureMapping, LayerHook, LayerScores, MatchResult, MatchSettings

logger = logging.getLogger("wbia_lightglue")

# Upstream prunes points only where the gather pays off: always on CPU, above 1536 points with flash.
PRUNING_MIN_POINTS = {"cpu": -1, "cuda": 1536}
# Points per side in one CPU batch (pairs x longest side); see auto_batch_size.
CPU_BATCH_POINTS = 4096


@dataclass
class _Side:
    """Padded state of one side of the active pairs: [B x L x ...] tensors plus an alive mask."""

    desc: torch.Tensor  # B x L x D
    enc: torch.Tensor  # 2 x B x 1 x L x head_dim (rotary cos/sin)
    alive: torch.Tensor  # B x L bool
    index: torch.Tensor  # B x L original keypoint index (changes only on compaction)

    def select(self, rows: torch.Tensor) -> "_Side":
        shared = self.desc.shape[0] == 1 < self.alive.shape[0]  # the query before the first layer
        desc = self.desc if shared else self.desc[rows]
        return _Side(desc, self.enc[:, rows], self.alive[rows], self.index[rows])

    def compact(self) -> "_Side":
        """Move alive points to the front of each row and trim the common padding."""
        length = int(self.alive.sum(1).max())
        if length >= self.alive.shape[1]:
            return self
        order = torch.sort((~self.alive).to(torch.int8), dim=1, stable=True).indices[:, :length]
        gather_d = order[..., None].expand(-1, -1, self.desc.shape[-1])
        gather_e = order[None, :, None, :, None].expand(2, -1, 1, -1, self.enc.shape[-1])
        return _Side(
            self.desc.gather(1, gather_d),
            self.enc.gather(3, gather_e),
            self.alive.gather(1, order),
            self.index.gather(1, order),
        )


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x = x.unflatten(-1, (-1, 2))
    x1, x2 = x.unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(start_dim=-2)


def _rotary(enc: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (t * enc[0]) + (_rotate_half(t) * enc[1])


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_alive: Optional[torch.Tensor]) -> torch.Tensor:
    mask = None if key_alive is None else key_alive[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def self_block(block: Any, x: torch.Tensor, enc: torch.Tensor, alive: Optional[torch.Tensor]) -> torch.Tensor:
    """Upstream SelfBlock with a key-padding mask (B x L bool, True = real point)."""
    qkv = block.Wqkv(x).unflatten(-1, (block.num_heads, -1, 3)).transpose(1, 2)
    q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
    # v is a strided slice: SDPA's fused CPU kernel needs a unit last-dim stride, else it falls back to math
    context = _attention(_rotary(enc, q), _rotary(enc, k), v.contiguous(), alive)
    message = block.out_proj(context.transpose(1, 2).flatten(start_dim=-2))
    return x + block.ffn(torch.cat([x, message], -1))


def cross_block(block: Any, x0: torch.Tensor, x1: torch.Tensor, alive0: torch.Tensor,
                alive1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Upstream CrossBlock (bidirectional attention, shared q/k projection) with key-padding masks.

    Upstream's CPU path computes one similarity matrix and two softmaxes; scaled_dot_product_attention in
    both directions gives the same result (the scale is split the same way) and is much faster.
    """
    heads = block.heads
    qk0, qk1 = block.to_qk(x0), block.to_qk(x1)
    v0, v1 = block.to_v(x0), block.to_v(x1)
    qk0, qk1, v0, v1 = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (qk0, qk1, v0, v1))
    m0 = _attention(qk0, qk1, v1, alive1)
    m1 = _attention(qk1, qk0, v0, alive0)
    m0, m1 = (block.to_out(t.transpose(1, 2).flatten(start_dim=-2)) for t in (m0, m1))
    return x0 + block.ffn(torch.cat([x0, m0], -1)), x1 + block.ffn(torch.cat([x1, m1], -1))


def transformer_layer(layer: Any, desc0: torch.Tensor, desc1: torch.Tensor, enc0: torch.Tensor, enc1: torch.Tensor,
                      alive0: torch.Tensor, alive1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One LightGlue layer on padded batches. ``desc0`` may hold a single row (the query before any
    cross-attention, identical for every pair): its self-attention then runs once and is broadcast."""
    if desc0.shape[0] == 1 and desc1.shape[0] > 1:
        desc0 = self_block(layer.self_attn, desc0, enc0[:, :1], alive0[:1]).expand(desc1.shape[0], -1, -1)
    else:
        desc0 = self_block(layer.self_attn, desc0, enc0, alive0)
    desc1 = self_block(layer.self_attn, desc1, enc1, alive1)
    return cross_block(layer.cross_attn, desc0, desc1, alive0, alive1)


def normalize_keypoints(kpts: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Upstream's normalisation: centre on the image, scale by half its long edge. kpts B x N x 2, size B x 2."""
    size = size.to(kpts)
    shift = size / 2
    scale = size.max(-1).values / 2
    return (kpts - shift[..., None, :]) / scale[..., None, None]


def log_assignment(head: Any, desc0: torch.Tensor, desc1: torch.Tensor, alive0: torch.Tensor,
                   alive1: torch.Tensor) -> torch.Tensor:
    """Upstream MatchAssignment restricted to the M x N block (no dustbins: matching never reads them).

    Entries involving a dead point are -inf, so they can never be a row's or column's maximum.
    """
    mdesc0, mdesc1 = head.final_proj(desc0), head.final_proj(desc1)
    d = mdesc0.shape[-1]
    mdesc0, mdesc1 = mdesc0 / d**0.25, mdesc1 / d**0.25
    sim = torch.einsum("bmd,bnd->bmn", mdesc0, mdesc1)
    valid = alive0[:, :, None] & alive1[:, None, :]
    sim = sim.masked_fill(~valid, -math.inf)
    z0, z1 = head.matchability(desc0), head.matchability(desc1)
    certainties = F.logsigmoid(z0) + F.logsigmoid(z1).transpose(1, 2)
    scores = F.log_softmax(sim, 2) + F.log_softmax(sim, 1) + certainties
    return scores.masked_fill(~valid, -math.inf)  # also clears NaN of all-dead rows/columns


Assignment = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (m0, mscores0, valid0), each B x M


def filter_matches(scores: torch.Tensor, alive0: torch.Tensor, threshold: float) -> Assignment:
    """Mutual nearest neighbours above ``threshold`` (upstream's rule). Returns (m0, mscores0, valid0)."""
    max0, max1 = scores.max(2), scores.max(1)
    m0, m1 = max0.indices, max1.indices
    rows = torch.arange(m0.shape[1], device=m0.device)[None]
    mutual0 = rows == m1.gather(1, m0)
    mscores0 = torch.where(mutual0, max0.values.exp(), max0.values.new_tensor(0))
    valid0 = mutual0 & (mscores0 > threshold) & alive0
    return m0, mscores0, valid0


def confidence_sums(mscores0: torch.Tensor, valid0: torch.Tensor) -> torch.Tensor:
    """Per pair, the sum of the confidences of its valid matches (the default pair score)."""
    return torch.where(valid0, mscores0, mscores0.new_tensor(0)).sum(1)


class BatchedLightGlue:
    """Scores one query against many database feature sets with an upstream ``LightGlue`` model.

    Args:
        model: an upstream ``LightGlue(features='aliked')`` module (weights loaded, eval mode).
        device: where to run.
        dtype: dtype of the transformer layers (float32, or bfloat16/float16 for mixed precision);
            confidences, pruning decisions and the assignment are always computed in float32.
        compile: wrap the transformer layer in ``torch.compile`` (falls back to eager on failure).
        memory_budget: bytes a batch may use; None = half the free GPU memory on CUDA, 1 GiB on CPU.
    """

    def __init__(self, model: Any, device: torch.device, dtype: torch.dtype = torch.float32, compile: bool = False,
                 memory_budget: Optional[int] = None):
        self.model = model
        self.memory_budget = memory_budget
        self.device = torch.device(device)
        self.dtype = dtype
        self.n_layers: int = model.conf.n_layers
        self.thresholds: torch.Tensor = model.confidence_thresholds.float()
        eager: List[Callable] = [functools.partial(transformer_layer, layer) for layer in model.transformers]
        self._eager_layers = eager
        self._layers = eager
        if compile:
            try:  # one compiled function per layer: each keeps its own graph cache (batch and lengths vary)
                self._layers = [torch.compile(fn, dynamic=True) for fn in eager]
            except Exception as exc:  # noqa: BLE001 - any compile problem means eager
                logger.warning("torch.compile unavailable (%s); LightGlue runs eagerly", exc)

    def _run_layer(self, i: int, side0: _Side, side1: _Side) -> Tuple[torch.Tensor, torch.Tensor]:
        args = (side0.desc, side1.desc, side0.enc, side1.enc, side0.alive, side1.alive)
        autocast = self.dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            try:
                return self._layers[i](*args)
            except Exception as exc:  # noqa: BLE001 - compilation errors surface at the first call
                if self._layers is self._eager_layers:
                    raise
                logger.warning("compiled LightGlue layer failed (%s); falling back to eager", exc)
                self._layers = self._eager_layers
                return self._layers[i](*args)

    # ------------------------------------------------------------------ inputs
    def _tensor(self, array: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        array = np.asarray(array)
        if not array.flags.writeable:  # cached features are read-only; torch cannot share such memory
            array = array.copy()
        return torch.as_tensor(array, dtype=dtype, device=self.device)

    def _encode(self, kpts: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        return self.model.posenc(normalize_keypoints(kpts, size))

    def _database_side(self, feats: Sequence[FeatureMapping], length: int) -> _Side:
        """Pad a batch of database feature sets to ``length`` points."""
        b, dim = len(feats), self.model.conf.input_dim
        kpts = torch.zeros(b, length, 2, device=self.device)
        desc = torch.zeros(b, length, dim, device=self.device)
        alive = torch.zeros(b, length, dtype=torch.bool, device=self.device)
        for row, f in enumerate(feats):
            n = len(f["keypoints"])
            kpts[row, :n] = self._tensor(f["keypoints"])
            desc[row, :n] = self._tensor(f["descriptors"])
            alive[row, :n] = True
        size = self._tensor(np.stack([np.asarray(f["image_size"], dtype=np.float32) for f in feats]))
        enc = self._encode(kpts, size)
        index = torch.arange(length, device=self.device).expand(b, -1)
        return _Side(self.model.input_proj(desc), enc, alive, index)

    def _query_side(self, query: FeatureMapping) -> _Side:
        m = len(query["keypoints"])
        kpts = self._tensor(query["keypoints"])[None]
        size = self._tensor(np.asarray(query["image_size"], dtype=np.float32))[None]
        desc = self.model.input_proj(self._tensor(query["descriptors"])[None])
        alive = torch.ones(1, m, dtype=torch.bool, device=self.device)
        index = torch.arange(m, device=self.device)[None]
        return _Side(desc, self._encode(kpts, size), alive, index)

    # ------------------------------------------------------------------ main entry
    @torch.no_grad()
    def match(
        self,
        query: FeatureMapping,
        database: Sequence[FeatureMapping],
        settings: MatchSettings = MatchSettings(),
        *,
        batch_size: Optional[int] = None,
        progress: bool = False,
        layer_hook: Optional[LayerHook] = None,
    ) -> List[MatchResult]:
        """Match ``query`` against every entry of ``database``; results in input order.

        ``layer_hook``, when given, is called after every layer but the last with the confidence sums of
        the pairs still running (it costs one assignment per layer: for tracing, not for production).
        When the device runs out of memory, the batch is halved and retried (``batch_size`` is then an
        upper bound); one pair that does not fit raises OutOfDeviceMemory.
        """
        results: Dict[int, MatchResult] = {}
        m = len(query["keypoints"])
        sizes = [len(f["keypoints"]) for f in database]
        for j, n in enumerate(sizes):
            if m == 0 or n == 0:  # upstream breaks before the first layer: nothing can match
                results[j] = self._empty(1, settings.return_matches)
        todo = sorted((j for j in range(len(database)) if j not in results), key=lambda j: -sizes[j])
        if todo:
            query_side = self._query_side(query)
            bar = tqdm(total=len(todo), desc="LightGlue", unit="pair", disable=not progress, leave=False)
            start, cap = 0, batch_size
            while start < len(todo):
                size = batch_size or self.auto_batch_size(m, sizes[todo[start]])
                chunk = todo[start:start + min(size, cap or size)]
                hook = None if layer_hook is None else _reindexed(layer_hook, chunk)
                try:
                    batch = self._match_batch(query_side, [database[j] for j in chunk], m, settings, hook)
                except torch.cuda.OutOfMemoryError:
                    batch = None  # handled below, once the failed batch's tensors are released
                if batch is None:
                    cap = self._back_off(len(chunk), m, sizes[chunk[0]])
                    continue
                for row, result in batch:
                    results[chunk[row]] = result
                bar.update(len(chunk))
                start += len(chunk)
            bar.close()
        return [results[j] for j in range(len(database))]

    def _back_off(self, pairs: int, m: int, n: int) -> int:
        """After running out of device memory with ``pairs`` pairs: the smaller batch to retry with.

        A single pair that does not fit raises OutOfDeviceMemory (keypoints too many for this device).
        A layer hook may see the pairs of the failed batch again.
        """
        release_device_memory(self.device)
        if pairs <= 1:
            raise OutOfDeviceMemory(f"out of memory on {self.device} matching one pair of {m} x {n} keypoints; "
                                    "lower max_num_keypoints or use a device with more memory")
        smaller = max(1, pairs // 2)
        logger.warning("out of memory on %s matching %d pairs at once; retrying %d at a time", self.device, pairs,
                       smaller)
        return smaller

    def auto_batch_size(self, m: int, n: int) -> int:
        """Pairs per batch from a memory budget (free GPU memory on CUDA, a fixed budget on CPU)."""
        budget = self.memory_budget_bytes()
        heads = self.model.conf.num_heads
        dim = self.model.conf.descriptor_dim
        # attention/similarity matrices (fp32, a few live at once) + per-point activations
        per_pair = 4 * (heads + 4) * (m * m + n * n + 2 * m * n) + 4 * 16 * dim * (m + n)
        size = int(max(1, min(256, budget // max(per_pair, 1))))
        if self.device.type == "cpu":
            # one pair already fills the CPU's matrix units; larger batches only add the padding left by
            # per-pair pruning (measured: 8 pairs at 512 points and 4 at 1024 beat 30 and 16 by ~10%)
            size = min(size, max(1, CPU_BATCH_POINTS // max(m, n)))
        return size

    def memory_budget_bytes(self) -> int:
        if self.memory_budget:
            return self.memory_budget
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * 0.5)
        return 1 << 30

    # ------------------------------------------------------------------ the forward
    def _match_batch(self, query_side: _Side, feats: Sequence[FeatureMapping], m: int, settings: MatchSettings,
                     layer_hook: Optional[LayerHook] = None) -> List[Tuple[int, MatchResult]]:
        """Results of one padded batch as (row in ``feats``, result) pairs, in the order pairs finish."""
        b = len(feats)
        n = torch.tensor([len(f["keypoints"]) for f in feats], device=self.device)
        side1 = self._database_side(feats, int(n.max()))
        # the query's descriptors stay one row until the first layer has run (see transformer_layer)
        side0 = _Side(query_side.desc, query_side.enc.expand(-1, b, -1, -1, -1),
                      query_side.alive.expand(b, -1), query_side.index.expand(b, -1))
        pair = torch.arange(b, device=self.device)  # active row -> row in ``feats``
        finished: List[Tuple[int, MatchResult]] = []
        prune_min = PRUNING_MIN_POINTS.get(self.device.type, -1)
        for i in range(self.n_layers):
            done = (side0.alive.sum(1) == 0) | (side1.alive.sum(1) == 0)  # everything pruned on a side
            if done.any():
                finished += [(int(row), self._empty(i + 1, settings.return_matches)) for row in pair[done].tolist()]
                side0, side1, pair, n, _, _ = self._drop(side0, side1, pair, n, done)
                if len(pair) == 0:
                    return finished
            d0, d1 = self._run_layer(i, side0, side1)
            side0.desc, side1.desc = d0.to(side0.desc.dtype), d1.to(side1.desc.dtype)
            if i == self.n_layers - 1:
                break
            token0 = token1 = None
            if settings.depth_confidence > 0:
                token0, token1 = self._tokens(i, side0.desc, side1.desc)
                stop = self._stop(i, token0, token1, side0.alive, side1.alive, m + n, settings.depth_confidence)
                if stop.any():
                    finished += self._finish(i, side0.select(stop), side1.select(stop), pair[stop], settings)
                    side0, side1, pair, n, token0, token1 = self._drop(side0, side1, pair, n, stop, token0, token1)
                    if len(pair) == 0:
                        return finished
            if layer_hook is not None:
                _, mscores0, valid0 = self._assignment(i, side0, side1, settings.filter_threshold)
                layer_hook(LayerScores(i + 1, pair.tolist(), confidence_sums(mscores0, valid0).tolist()))
            if settings.screen is not None and i + 1 == settings.screen[0]:
                low, screened = self._screen(i, side0, side1, pair, settings)
                finished += screened
                if low.any():
                    side0, side1, pair, n, token0, token1 = self._drop(side0, side1, pair, n, low, token0, token1)
                    if len(pair) == 0:
                        return finished
            if settings.width_confidence > 0:
                side0.alive = self._prune(i, side0, token0, settings.width_confidence, prune_min)
                side1.alive = self._prune(i, side1, token1, settings.width_confidence, prune_min)
                side0, side1 = self._maybe_compact(side0), self._maybe_compact(side1)
        return finished + self._finish(self.n_layers - 1, side0, side1, pair, settings)

    @staticmethod
    def _drop(side0: _Side, side1: _Side, pair: torch.Tensor, n: torch.Tensor, rows: torch.Tensor,
              token0: Optional[torch.Tensor] = None, token1: Optional[torch.Tensor] = None) -> tuple:
        """Remove the finished ``rows`` from every per-pair tensor of the batch (tokens may be None)."""
        keep = ~rows
        tokens = [None if t is None else t[keep] for t in (token0, token1)]
        return (side0.select(keep), side1.select(keep), pair[keep], n[keep], *tokens)

    def _tokens(self, i: int, desc0: torch.Tensor, desc1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        token = self.model.token_confidence[i].token
        return token(desc0.float()).squeeze(-1), token(desc1.float()).squeeze(-1)

    def _stop(self, i: int, token0: torch.Tensor, token1: torch.Tensor, alive0: torch.Tensor, alive1: torch.Tensor,
              num_points: torch.Tensor, depth_conf: float) -> torch.Tensor:
        """Upstream's rule per pair: pruned points count as confident; denominator = original m + n."""
        threshold = self.thresholds[i]
        low = ((token0 < threshold) & alive0).sum(1) + ((token1 < threshold) & alive1).sum(1)
        ratio_confident = 1.0 - low.float() / num_points.float()
        return ratio_confident > depth_conf

    def _prune(self, i: int, side: _Side, token: Optional[torch.Tensor], width_conf: float,
               prune_min: int) -> torch.Tensor:
        """Clear the alive bit of points upstream would prune, per pair, only where it would prune."""
        counts = side.alive.sum(1)
        applies = counts > prune_min
        if not applies.any():
            return side.alive
        matchability = torch.sigmoid(self.model.log_assignment[i].matchability(side.desc.float())).squeeze(-1)
        keep = matchability > (1 - width_conf)
        if token is not None:  # low-confidence points are never pruned
            keep |= token <= self.thresholds[i]
        return torch.where(applies[:, None], side.alive & keep, side.alive)

    @staticmethod
    def _maybe_compact(side: _Side) -> _Side:
        """Drop pruned points once no pair needs the padded length (as upstream drops them at once)."""
        longest = int(side.alive.sum(1).max())
        return side.compact() if longest < side.alive.shape[1] else side

    def _screen(self, i: int, side0: _Side, side1: _Side, pair: torch.Tensor,
                settings: MatchSettings) -> Tuple[torch.Tensor, List[Tuple[int, MatchResult]]]:
        """At the screen layer: the rows whose confidence sum is below the bar, and their results."""
        assert settings.screen is not None
        assigned = self._assignment(i, side0, side1, settings.filter_threshold)
        low = confidence_sums(*assigned[1:]) < settings.screen[1]
        if not low.any():
            return low, []
        return low, self._finish(i, side0.select(low), side1.select(low), pair[low], settings,
                                 assigned=(assigned[0][low], assigned[1][low], assigned[2][low]))

    def _assignment(self, i: int, side0: _Side, side1: _Side, threshold: float) -> Assignment:
        """(m0, mscores0, valid0) of the active pairs with the assignment head of layer ``i``."""
        scores = log_assignment(self.model.log_assignment[i], side0.desc.float(), side1.desc.float(),
                                side0.alive, side1.alive)
        return filter_matches(scores, side0.alive, threshold)

    def _finish(self, i: int, side0: _Side, side1: _Side, pair: torch.Tensor, settings: MatchSettings,
                assigned: Optional[Assignment] = None) -> List[Tuple[int, MatchResult]]:
        """Score the given rows with the assignment head of layer ``i``: (row in the batch, result) pairs."""
        m0, mscores0, valid0 = assigned if assigned is not None else self._assignment(
            i, side0, side1, settings.filter_threshold)
        totals = confidence_sums(mscores0, valid0).tolist()
        counts = valid0.sum(1).tolist()
        out = []
        for row, target in enumerate(pair.tolist()):
            result = MatchResult(score=float(totals[row]), num_matches=int(counts[row]), stop_layer=i + 1)
            if settings.return_matches:
                rows = valid0[row].nonzero()[:, 0]
                q_index = side0.index[row, rows]
                d_index = side1.index[row, m0[row, rows]]
                result.matches = torch.stack([q_index, d_index], -1).cpu().numpy().astype(np.int64)
                result.confidences = mscores0[row, rows].float().cpu().numpy()
            out.append((int(target), result))
        return out

    @staticmethod
    def _empty(stop_layer: int, return_matches: bool) -> MatchResult:
        result = MatchResult(score=0.0, num_matches=0, stop_layer=stop_layer)
        if return_matches:
            result.matches = np.zeros((0, 2), dtype=np.int64)
            result.confidences = np.zeros((0,), dtype=np.float32)
        return result


def _reindexed(hook: LayerHook, chunk: Sequence[int]) -> LayerHook:
    """A hook for one batch that reports positions in the caller's database, not rows of the batch."""
    def batch_hook(scores: LayerScores) -> None:
        hook(LayerScores(scores.layer, [chunk[row] for row in scores.positions], scores.confidence_sums))
    return batch_hook
