"""CLIP image preprocessing in pure numpy + PIL, matching open_clip's eval transform.

The runtime path (ONNX vision graph) must not need torch or open_clip, yet its inputs must be the ones the vision
tower was trained and exported with. This module reproduces::

    open_clip.image_transform(image_size, is_train=False, mean=..., std=..., interpolation=..., resize_mode=...)

operation for operation, with the same PIL calls in the same order, so results agree to float32 rounding:

1. ``torchvision.transforms.Resize`` on the PIL image *in its original mode* (``shortest``: short side to ``S``,
   long side ``int(S * long / short)``, no-op when already that size; ``squash``: straight to ``S x S``). PIL itself
   switches ``P``/``1`` images to nearest-neighbour and resizes ``RGBA``/``LA`` premultiplied.
2. ``CenterCrop(S)``: offsets ``int(round((h - S) / 2.0))`` (Python's round, i.e. half to even).
3. ``convert("RGB")`` (open_clip's ``MaybeConvertMode``), *after* resizing, so callers must not convert first.
4. ``ToTensor``: ``uint8 -> float32 / 255``, HWC -> CHW.
5. ``Normalize``: ``(x - mean) / std`` in float32.

Based on: open_clip ``src/open_clip/transform.py`` (``image_transform``, ``MaybeConvertMode``, ``PreprocessCfg``) and
torchvision ``transforms/functional.py`` (``resize``, ``_compute_resized_output_size``, ``center_crop``,
``to_tensor``, ``normalize``); no code copied.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from pmllm_batch.preprocess_cfg import (
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    PreprocessCfg,
    PreprocessCfgDict,
    preprocess_cfg_from_open_clip,
)

__all__ = [
    "OPENAI_DATASET_MEAN",
    "OPENAI_DATASET_STD",
    "PreprocessCfg",
    "PreprocessCfgDict",
    "preprocess_batch",
    "preprocess_cfg_from_open_clip",
    "preprocess_image",
]

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def _resize(img: Image.Image, cfg: PreprocessCfg) -> Image.Image:
    """torchvision ``Resize`` semantics on a PIL image (``shortest``: int size; ``squash``: (S, S))."""
    s = cfg.image_size
    w, h = img.size
    if cfg.resize_mode == "squash":
        new_w, new_h = s, s
    else:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = s, int(s * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img  # torchvision skips the resample entirely in this case
    return img.resize((new_w, new_h), _RESAMPLE[cfg.interpolation])


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if size > w or size > h:
        # Unreachable after _resize (both sides end up >= size); torchvision would pad with zeros here.
        raise ValueError(f"image {w}x{h} is smaller than the crop {size}x{size}")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def preprocess_image(img: Image.Image, cfg: PreprocessCfg) -> np.ndarray:
    """Turn one PIL image into the vision tower's input.

    Args:
        img: a PIL image in any mode, upright (EXIF-transposed); do not convert it to RGB first (see module doc).
        cfg: Preprocessing config of the vision weights.

    Returns:
        float32 array of shape (3, S, S), normalised, channel order RGB.
    """
    out = _resize(img, cfg)
    if cfg.resize_mode == "shortest":
        out = _center_crop(out, cfg.image_size)
    out = out.convert("RGB")
    x = np.asarray(out, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    x = x.transpose(2, 0, 1)
    mean = np.asarray(cfg.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(cfg.std, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def preprocess_batch(images: Sequence[Image.Image], cfg: PreprocessCfg) -> np.ndarray:
    """Preprocess several images into one batch.

    Args:
        images: PIL images of any sizes and modes.
        cfg: Preprocessing config of the vision weights.

    Returns:
        float32 array of shape (B, 3, S, S); (0, 3, S, S) for an empty sequence.
    """
    s = cfg.image_size
    batch = np.empty((len(images), 3, s, s), dtype=np.float32)
    for i, img in enumerate(images):
        batch[i] = preprocess_image(img, cfg)
    return batch
