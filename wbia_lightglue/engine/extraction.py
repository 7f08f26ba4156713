"""ALIKED extraction: validate a chip, resize its long edge, run ALIKED in batches, return feature dicts.

A feature dict holds ``keypoints`` [N x 2] float32 (x, y in the chip's own pixels), ``descriptors``
[N x 128] float32, ``keypoint_scores`` [N], ``image_size`` [2] (width, height) and ``fingerprint`` (the
config's feature fingerprint). One unusable chip never fails the others (``on_error='skip'``).
"""
from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any, List, Literal, Mapping, Optional, Sequence, Tuple

import numpy as np

from .config import Config, ConfigLike, resolve_config
from .device import DeviceLike, OutOfDeviceMemory, release_device_memory, resolve_device
from .match_types import Features
from .models import get_extractor

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("wbia_lightglue")

# What to do with one bad input among many (a chip, an image, a store entry): skip it with a warning
# naming it, or raise. The one spelling used across extraction and the feature store.
OnError = Literal["skip", "raise"]
ON_ERROR_CHOICES = ("skip", "raise")


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, got {on_error!r}")


class InvalidChipError(ValueError):
    """An annotation chip cannot be used; the message names the annotation and what is wrong."""


MIN_CHIP_SIDE = 8  # pixels; smaller chips hold no usable texture
MIN_RESIZED_SIDE = 16
# How a chip is downsized to image_size: 'area' (OpenCV INTER_AREA) or 'antialias' (upstream ALIKED's own
# preprocessing: kornia bilinear with antialiasing, kept in float). Measured on nyala-fullres by
# benchmarks/resize_nyala.py (README, "Resizing"); upsizing is always bilinear. 'area' is kept: on the
# held-out part B (1024 keypoints) R-1/R-5/mAP were 27.6/55.2/0.410 with it, 25.9/60.3/0.404 with 'antialias'.
RESIZE_METHODS = ("area", "antialias")
RESIZE_METHOD = "area"


def _label(key: Any) -> str:
    return "chip" if key is None else f"annotation {key!r}"


def prepare_chip(chip: Any, key: Any = None) -> np.ndarray:
    """Validate a WBIA chip (HxWx3 BGR uint8; grayscale and BGRA accepted) and return it as RGB uint8."""
    label = _label(key)
    if not isinstance(chip, np.ndarray):
        raise InvalidChipError(f"{label}: expected a numpy array, got {type(chip).__name__}")
    if chip.dtype != np.uint8:
        extra = " (contains NaN)" if chip.dtype.kind == "f" and np.isnan(chip).any() else ""
        raise InvalidChipError(f"{label}: expected a uint8 BGR image, got dtype {chip.dtype}{extra}")
    if chip.ndim == 2:
        chip = chip[:, :, None]
    if chip.ndim != 3 or chip.shape[2] not in (1, 3, 4):
        raise InvalidChipError(f"{label}: expected an HxWx3 BGR image, got shape {chip.shape}")
    height, width = chip.shape[:2]
    if height == 0 or width == 0:
        raise InvalidChipError(f"{label}: the chip is empty (shape {chip.shape})")
    if min(height, width) < MIN_CHIP_SIDE:
        raise InvalidChipError(
            f"{label}: the chip is {width}x{height} pixels; at least {MIN_CHIP_SIDE} on each side is needed")
    if chip.shape[2] == 1:
        chip = np.repeat(chip, 3, axis=2)
    return np.ascontiguousarray(chip[:, :, 2::-1])  # BGR(A) -> RGB


def resize_long_edge(image: np.ndarray, size: int, key: Any = None,
                     method: Optional[str] = None) -> Tuple[np.ndarray, Tuple[float, float]]:
    """Resize so the long edge is ``size``; returns the image and the (x, y) scale factors.

    ``method`` (default ``RESIZE_METHOD``) chooses the downsizing filter; see ``RESIZE_METHODS``.
    """
    import cv2

    method = method or RESIZE_METHOD
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method {method!r}; expected one of {', '.join(RESIZE_METHODS)}")
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    if min(new_w, new_h) < MIN_RESIZED_SIDE:
        raise InvalidChipError(
            f"{_label(key)}: a {width}x{height} chip becomes {new_w}x{new_h} at image_size {size}; "
            f"the aspect ratio is too extreme")
    if (new_w, new_h) != (width, height):
        if method == "antialias" and scale < 1:
            image = _resize_antialias(image, new_w, new_h)
        else:
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return image, (new_w / width, new_h / height)


def _resize_antialias(image: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """Upstream's resize (kornia bilinear, antialias=True); float32 in 0..255, not rounded, as upstream."""
    import kornia
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    out = kornia.geometry.transform.resize(tensor, (new_h, new_w), interpolation="bilinear", antialias=True,
                                           align_corners=None)
    return (out[0].permute(1, 2, 0) * 255).numpy().astype(np.float32)


def empty_features(config: Config, image_size: Tuple[int, int] = (0, 0), error: Optional[str] = None) -> Features:
    """Features of an annotation with no keypoints (every score against it is 0)."""
    feats: Features = {
        "keypoints": np.zeros((0, 2), np.float32),
        "descriptors": np.zeros((0, 128), np.float32),
        "keypoint_scores": np.zeros((0,), np.float32),
        "image_size": np.asarray(image_size, np.int64),
        "fingerprint": config.feature_fingerprint,
    }
    if error:
        feats["error"] = error
    return feats


def features_nbytes(feats: Mapping[str, Any]) -> int:
    """Bytes held by the arrays of one feature dict (the cache's byte bound counts these)."""
    return sum(v.nbytes for v in feats.values() if isinstance(v, np.ndarray))


def _run_aliked(extractor: Any, images: List[np.ndarray], device: "torch.device") -> List[Features]:
    """ALIKED on RGB uint8 images (one batch, zero-padded to the largest; DKD masks the padding)."""
    import torch

    height = max(im.shape[0] for im in images)
    width = max(im.shape[1] for im in images)
    batch = torch.zeros(len(images), 3, height, width, device=device)
    for i, im in enumerate(images):
        batch[i, :, :im.shape[0], :im.shape[1]] = torch.from_numpy(im).to(device).permute(2, 0, 1).float() / 255
    sizes = torch.tensor([[im.shape[1], im.shape[0]] for im in images], device=device)
    candidates = min(im.shape[0] * im.shape[1] for im in images)
    module = extractor
    if extractor.dkd.top_k > candidates:  # tiny image: top-k cannot ask for more pixels than exist
        module = copy.copy(extractor)
        module.dkd = copy.copy(extractor.dkd)
        module.dkd.top_k = candidates
    with torch.no_grad():
        out = module({"image": batch, "image_size": sizes if len(images) > 1 else None})
    return [Features(keypoints=out["keypoints"][i].float().cpu().numpy(),
                     descriptors=out["descriptors"][i].float().cpu().numpy(),
                     keypoint_scores=out["keypoint_scores"][i].float().cpu().numpy()) for i in range(len(images))]


def _run_aliked_or_none(extractor: Any, images: List[np.ndarray],
                        device: "torch.device") -> Optional[List[Features]]:
    """_run_aliked, or None when the device ran out of memory (the caller retries once it is released)."""
    import torch

    try:
        return _run_aliked(extractor, images, device)
    except torch.cuda.OutOfMemoryError:
        return None


def _back_off(chips: int, config: Config, device: "torch.device") -> int:
    release_device_memory(device)
    if chips <= 1:
        raise OutOfDeviceMemory(f"out of memory on {device} extracting one chip at image_size {config['image_size']} "
                                f"with {config['model_name']}; lower image_size or use a device with more memory")
    logger.warning("out of memory on %s extracting %d chips at once; retrying %d at a time", device, chips, chips // 2)
    return max(1, chips // 2)


def extract_features(
    chips: Sequence[np.ndarray],
    config: ConfigLike = None,
    keys: Optional[Sequence[Any]] = None,
    *,
    device: DeviceLike = None,
    on_error: OnError = "skip",
    batch_size: Optional[int] = None,
    progress: bool = True,
) -> List[Features]:
    """ALIKED keypoints and descriptors for each chip, in input order.

    Args:
        chips: HxWx3 BGR uint8 arrays (WBIA chips); grayscale and BGRA are accepted.
        config: a config, a mapping of overrides, a config file path, or None.
        keys: one name per chip (e.g. annotation ids) used in messages.
        on_error: 'skip' (default): an unusable chip is logged and gets empty features with an ``error``
            entry, so one bad annotation never fails the others; 'raise': raise InvalidChipError.
        batch_size: chips per forward; default 1 on CPU (no gain there) and 16 on CUDA. When the device runs
            out of memory the batch is halved and retried; one chip that does not fit raises OutOfDeviceMemory.

    Returns:
        One dict per chip: ``keypoints`` [N x 2] float32 (x, y) in the chip's own pixel coordinates,
        ``descriptors`` [N x 128] float32, ``keypoint_scores`` [N] float32, ``image_size`` [2]
        (width, height) of the chip, and ``fingerprint`` (the config's feature fingerprint).
    """
    from tqdm.auto import tqdm

    check_on_error(on_error)
    config = resolve_config(config)
    keys = list(keys) if keys is not None else [None] * len(chips)
    if len(keys) != len(chips):
        raise ValueError(f"{len(chips)} chips but {len(keys)} keys")
    device = resolve_device(config, device)
    results: List[Optional[Features]] = [None] * len(chips)
    prepared = []  # (position, resized RGB, scale, original (w, h))
    for pos, (chip, key) in enumerate(zip(chips, keys)):
        try:
            rgb = prepare_chip(chip, key)
            resized, scale = resize_long_edge(rgb, config["image_size"], key)
        except InvalidChipError as exc:
            if on_error == "raise":
                raise
            logger.warning("%s; it gets no keypoints (score 0)", exc)
            shape = getattr(chip, "shape", (0, 0))
            size = (shape[1], shape[0]) if len(shape) >= 2 else (0, 0)
            results[pos] = empty_features(config, size, error=str(exc))
            continue
        prepared.append((pos, resized, scale, (rgb.shape[1], rgb.shape[0])))
    if prepared:
        extractor = get_extractor(config, device)
        step = batch_size or (16 if device.type == "cuda" else 1)
        prepared.sort(key=lambda item: item[1].shape[:2])  # similar shapes together: little padding
        bar = tqdm(total=len(prepared), desc="ALIKED", unit="chip", disable=not progress or len(prepared) < 2)
        start = 0
        while start < len(prepared):
            group = prepared[start:start + step]
            outputs = _run_aliked_or_none(extractor, [item[1] for item in group], device)
            if outputs is None:  # out of device memory: halve the batch and retry (alone: give up)
                step = _back_off(len(group), config, device)
                continue
            for (pos, _, scale, size), out in zip(group, outputs):
                # resized-pixel -> chip-pixel coordinates (pixel centres), as upstream's Extractor.extract
                out["keypoints"] = ((out["keypoints"] + 0.5) / np.asarray(scale, np.float32) - 0.5).astype(np.float32)
                out["image_size"] = np.asarray(size, np.int64)
                out["fingerprint"] = config.feature_fingerprint
                results[pos] = out
            bar.update(len(group))
            start += len(group)
        bar.close()
    return results  # type: ignore[return-value]
