"""The vision weights' preprocessing contract (ground layer: no torch, no open_clip, no PIL pipeline).

:class:`PreprocessCfg` travels with the weights (open_clip's ``PreprocessCfg``): the model layer attaches it to a
tower, the runtime layer reproduces the transform from it (``runtime/preprocess.py``), and artefact folders store it
as ``preprocess_cfg.json``. It lives here, below both, so neither layer imports the other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import SupportsInt, TypedDict, cast

__all__ = [
    "INTERPOLATIONS",
    "OPENAI_DATASET_MEAN",
    "OPENAI_DATASET_STD",
    "RESIZE_MODES",
    "PreprocessCfg",
    "PreprocessCfgDict",
    "preprocess_cfg_from_open_clip",
]

# Same values as open_clip.constants; repeated so the runtime does not import open_clip.
OPENAI_DATASET_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

INTERPOLATIONS = ("bicubic", "bilinear")  # PIL filters, antialiased
RESIZE_MODES = ("shortest", "squash")


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
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {list(RESIZE_MODES)}, got {self.resize_mode!r}")

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
    def from_dict(cls, d: Mapping[str, object]) -> PreprocessCfg:
        """Build from :meth:`to_dict` output; open_clip's key ``size`` is accepted for ``image_size``.

        Unknown keys are ignored so newer artifact files still load.

        Raises:
            ValueError: A required key is missing or a value is invalid.
        """
        size = d.get("image_size", d.get("size"))
        if size is None or "mean" not in d or "std" not in d:
            raise ValueError("preprocess config needs 'image_size', 'mean' and 'std'")
        # Values as the JSON holds them: __post_init__ checks (and normalises) each, raising ValueError.
        return cls(
            image_size=_square_size(size),
            mean=cast("tuple[float, float, float]", d["mean"]),
            std=cast("tuple[float, float, float]", d["std"]),
            interpolation=cast(str, d.get("interpolation") or "bicubic"),
            resize_mode=cast(str, d.get("resize_mode") or "shortest"),
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


def _square_size(size: object) -> int:
    if isinstance(size, list | tuple):
        if len(size) == 1:
            size = size[0]
        elif len(size) == 2 and int(size[0]) == int(size[1]):
            size = size[0]
        else:
            raise ValueError(f"only square image sizes are supported, got {tuple(size)}")
    return int(cast(SupportsInt, size))  # a number from JSON or open_clip; int() raises on anything else


def preprocess_cfg_from_open_clip(visual: object) -> PreprocessCfg:
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
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode {resize_mode!r} is not supported by the runtime (use one of {RESIZE_MODES})")
    return PreprocessCfg(
        image_size=_square_size(size),
        mean=mean,
        std=std,
        interpolation=interpolation,
        resize_mode=resize_mode,
    )
