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

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from PIL import Image

__all__ = [
    "OPENAI_DATASET_MEAN",
    "OPENAI_DATASET_STD",
    "PreprocessCfg",
    "PreprocessCfgDict",
    "preprocess_batch",
    "preprocess_cfg_from_open_clip",
    "preprocess_image",
]

# Same values as open_clip.constants; repeated so the runtime does not import open_clip.
OPENAI_DATASET_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_RESIZE_MODES = ("shortest", "squash")


class PreprocessCfgDict(TypedDict):
    """JSON form of :class:`PreprocessCfg` (``preprocess_cfg.json`` in a model artifact folder)."""

    image_size: int
    mean: list[float]
    std: list[float]
    interpolation: str
    resize_mode: str


def _three_floats(name: str, value: Sequence[float] | float) -> tuple[float, float, float]:
    if isinstance(value, int | float):
        value = (value, value, value)
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"{name} needs 3 values (one per RGB channel), got {len(values)}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class PreprocessCfg:
    """How images are turned into the vision tower's input; belongs to the weights, not the architecture."""

    image_size: int  # square input side S in pixels, e.g. 224 or 336
    mean: tuple[float, float, float]  # per-channel mean on the [0, 1] scale
    std: tuple[float, float, float]  # per-channel std on the [0, 1] scale
    interpolation: str = "bicubic"  # "bicubic" | "bilinear" (PIL filters, antialiased)
    resize_mode: str = "shortest"  # "shortest" (short side to S, center crop) | "squash" (S x S, aspect not kept)

    def __post_init__(self) -> None:
        # Normalise lists from JSON to tuples so equal configs compare and hash equal.
        object.__setattr__(self, "mean", _three_floats("mean", self.mean))
        object.__setattr__(self, "std", _three_floats("std", self.std))
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"image_size must be a positive integer, got {size!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}")
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {list(_RESIZE_MODES)}, got {self.resize_mode!r}")

    def to_dict(self) -> PreprocessCfgDict:
        """Return the JSON-ready form (lists instead of tuples)."""
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessCfg:
        """Build from :meth:`to_dict` output; open_clip's key ``size`` is accepted for ``image_size``.

        Unknown keys are ignored so newer artifact files still load.

        Raises:
            ValueError: A required key is missing or a value is invalid.
        """
        size = d.get("image_size", d.get("size"))
        if size is None or "mean" not in d or "std" not in d:
            raise ValueError("preprocess config needs 'image_size', 'mean' and 'std'")
        return cls(
            image_size=_square_size(size),
            mean=d["mean"],
            std=d["std"],
            interpolation=d.get("interpolation") or "bicubic",
            resize_mode=d.get("resize_mode") or "shortest",
        )

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write the config as ``preprocess_cfg.json``-style JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> PreprocessCfg:
        """Read a config written by :meth:`save_json`.

        Raises:
            OSError: The file cannot be read.
            ValueError: The file is not valid JSON or not a valid config.
        """
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(data)


def _square_size(size: Any) -> int:
    if isinstance(size, list | tuple):
        if len(size) == 1:
            size = size[0]
        elif len(size) == 2 and int(size[0]) == int(size[1]):
            size = size[0]
        else:
            raise ValueError(f"only square image sizes are supported, got {tuple(size)}")
    return int(size)


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
        img: Any-mode PIL image, already upright (EXIF-transposed); do not convert it to RGB first (see module doc).
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


def preprocess_cfg_from_open_clip(visual: Any) -> PreprocessCfg:
    """Read the preprocessing config attached to an open_clip model or its ``visual`` tower.

    Mirrors ``open_clip.get_model_preprocess_cfg``: the ``preprocess_cfg`` dict when present (set by
    ``open_clip.create_model`` from the pretrained tag), else the legacy ``image_size`` / ``image_mean`` /
    ``image_std`` attributes; OpenAI mean/std when none are set. Does not import open_clip or torch.

    Args:
        visual: ``model.visual`` (or the whole model; its ``visual`` attribute is used).

    Returns:
        The config.

    Raises:
        ValueError: The tower uses something this runtime does not reproduce (non-square size, ``longest`` resize
            mode, a mode other than RGB) or has no image size.
    """
    module = getattr(visual, "visual", visual)
    pp = dict(getattr(module, "preprocess_cfg", None) or {})
    size = pp.get("size", getattr(module, "image_size", None))
    if size is None:
        raise ValueError("open_clip visual tower has no image size (neither preprocess_cfg['size'] nor image_size)")
    mean = pp.get("mean") or getattr(module, "image_mean", None) or OPENAI_DATASET_MEAN
    std = pp.get("std") or getattr(module, "image_std", None) or OPENAI_DATASET_STD
    mode = pp.get("mode", "RGB")
    if mode != "RGB":
        raise ValueError(f"only RGB preprocessing is supported, the tower uses mode {mode!r}")
    interpolation = pp.get("interpolation") or "bicubic"
    # open_clip's eval transform treats 'random' (a training-time option) as bicubic.
    if interpolation == "random":
        interpolation = "bicubic"
    resize_mode = pp.get("resize_mode") or "shortest"
    if resize_mode not in _RESIZE_MODES:
        raise ValueError(f"resize_mode {resize_mode!r} is not supported by the runtime (use one of {_RESIZE_MODES})")
    return PreprocessCfg(
        image_size=_square_size(size),
        mean=mean,
        std=std,
        interpolation=interpolation,
        resize_mode=resize_mode,
    )
