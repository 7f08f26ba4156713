"""What a config costs in memory, checked against what the device has before any work starts.

The figures are peak working memory measured on CPU (fp32, torch 2.14; ``benchmarks/bench_peak_memory.py``):
ALIKED needs about 1.7 KB per input pixel (aliked-t16: 1.0 KB), and one LightGlue pair of ``m`` x ``n``
keypoints about 24 bytes per keypoint pair plus 32 KB per keypoint (the assignment matrices dominate).
A square chip is the worst case for ``image_size``. So the defaults (512 px, 2048 keypoints) need about
0.5 GB to extract and 0.2 GB to match; ``image_size`` 4096 with aliked-n16 about 29 GB and 16,384
keypoints about 7 GB per pair.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .config import Config, ConfigError
from .device import DeviceLike, resolve_device

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("wbia_lightglue")

EXTRACT_BYTES_PER_PIXEL = {"aliked-t16": 1000, "aliked-n16": 1750, "aliked-n16rot": 1750, "aliked-n32": 1750}
PAIR_BYTES_PER_KEYPOINT_PAIR = 24
PAIR_BYTES_PER_KEYPOINT = 32 << 10
WARN_FRACTION = 0.5  # warn when one item needs more than this share of the available memory

GiB = float(1 << 30)


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak working memory of one extraction and one matched pair under a config, and what is available."""

    extraction: int  # bytes to extract one square chip at image_size
    pair: int  # bytes to match one pair at max_num_keypoints on both sides
    available: Optional[int]  # bytes free on the device (None: unknown)
    device: str

    @property
    def largest(self) -> int:
        return max(self.extraction, self.pair)

    def describe(self, config: Config) -> str:
        have = f"{self.available / GiB:.1f} GiB" if self.available is not None else "an unknown amount"
        return (f"image_size {config['image_size']} with {config['model_name']} needs about "
                f"{self.extraction / GiB:.1f} GiB to extract one photo and max_num_keypoints "
                f"{config['max_num_keypoints']} about {self.pair / GiB:.1f} GiB to match one pair; "
                f"{self.device} has {have} available")


def estimate_memory(config: Config, device: DeviceLike = None, available: Optional[int] = None) -> MemoryEstimate:
    """The estimate for ``config`` on ``device`` (``available`` overrides the measured free memory)."""
    torch_device = resolve_device(config, device)
    size, keypoints = config["image_size"], config["max_num_keypoints"]
    extraction = size * size * EXTRACT_BYTES_PER_PIXEL[config["model_name"]]
    pair = PAIR_BYTES_PER_KEYPOINT_PAIR * keypoints * keypoints + PAIR_BYTES_PER_KEYPOINT * 2 * keypoints
    return MemoryEstimate(extraction, pair, available if available is not None else available_memory(torch_device),
                          str(torch_device))


def check_memory(config: Config, device: DeviceLike = None, available: Optional[int] = None) -> MemoryEstimate:
    """Refuse (ConfigError) a config whose single extraction or pair cannot fit; warn when it takes over half."""
    estimate = estimate_memory(config, device, available)
    if estimate.available is None:
        return estimate
    if estimate.largest > estimate.available:
        raise ConfigError(f"config {config.source or '(defaults)'} cannot fit in memory: {estimate.describe(config)}; "
                          "lower image_size or max_num_keypoints")
    if estimate.largest > WARN_FRACTION * estimate.available:
        logger.warning("config %s may run out of memory: %s", config.source or "(defaults)", estimate.describe(config))
    return estimate


def available_memory(device: "torch.device") -> Optional[int]:
    """Free bytes on ``device``: CUDA's free memory, or on CPU what Linux (and a cgroup limit) leaves free."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    known = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    return min(known) if known else None


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_headroom() -> Optional[int]:
    """memory.max - memory.current of this process's cgroup (v2), when a limit is set."""
    try:
        with open("/sys/fs/cgroup/memory.max") as handle:
            limit = handle.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as handle:
            current = int(handle.read().strip())
        return max(0, int(limit) - current)
    except (OSError, ValueError):
        return None
