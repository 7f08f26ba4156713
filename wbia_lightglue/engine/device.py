"""Devices: the torch device a config asks for, its precision, and out-of-memory handling.

Below the models and the matcher (both use it); torch is imported inside the functions, never at import time
(WBIA forks job-engine processes, and CUDA must not be initialised before the fork).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Union

from .config import DEVICES, Config, ConfigError, device_name_ok

if TYPE_CHECKING:
    import torch

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
