"""Architecture configuration of a P-MLLM model (what a preset JSON and ``pmllm_config.json`` hold).

Architecture (this file) is kept apart from runtime settings (``config.toml``) and from weights
(the adapter folder), following open_clip's split of model configs, pretrained tags and transforms.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, TypedDict, cast

from pmllm_batch.errors import ConfigError

if TYPE_CHECKING:
    from pmllm_batch.contracts import JSON, JSONDict


class ModelCfgDict(TypedDict, total=False):
    """A model config as JSON (a preset's ``model``, ``pmllm_config.json``'s ``model``): :class:`ModelCfg`'s fields,
    each section an object of its dataclass's fields."""

    name: str
    description: str
    demo: bool
    projector_type: str
    vision: dict[str, JSON]
    lm: dict[str, JSON]
    fusion: dict[str, JSON]
    readout: dict[str, JSON]


@dataclass
class VisionCfg:
    model_name: str = "ViT-L-14-336"  # open_clip model name (ignored when ``arch`` is given)
    pretrained: str | None = "openai"  # open_clip pretrained tag, or None
    checkpoint: str | None = None  # local weights (safetensors) for the visual tower; overrides ``pretrained``
    arch: dict[str, int | float | str | bool] | None = None  # open_clip CLIPVisionCfg fields of a custom (tiny) tower
    select_layer: int = -2  # block whose output is used; -2 = penultimate (LLaVA convention)
    select_feature: str = "patch"  # "patch" drops CLS (LLaVA), "cls_patch" keeps it
    image_size: int | None = None  # only for ``arch`` towers
    mean: tuple[float, float, float] | None = None  # only for ``arch`` towers; open_clip's otherwise
    std: tuple[float, float, float] | None = None
    # Average-pool the patch grid k×k before the projector (LLaVA-OneVision's pooling): k² fewer features (and
    # tokens), so a k² smaller feature cache (the paper preset: 576 → 144 features). Part of the model: train with it.
    pool: int = 1


@dataclass
class LMCfg:
    name_or_path: str = "meta-llama/Llama-3.1-8B-Instruct"  # HF hub id or local folder
    revision: str | None = None
    dtype: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU) | "float32" | "bfloat16" | "float16"
    decoder_layers_path: str | None = None  # dotted path of the decoder ModuleList; None = by model_type
    gguf: str | None = None  # fallback weights: a GGUF path or "py:<package>/<file>" (see model/llm.py)
    quantize: str = "none"  # "none" | "int8": int8 decoder-layer Linears on CPU (model/quantize.py)


@dataclass
class FusionCfg:
    layer_ids: list[int] = field(default_factory=lambda: [0, 1, 2])  # paper: the lowest three blocks
    num_heads: int | None = None  # cross-attention heads; None = the LLM's attention heads
    width: int | None = None  # inner width of q/k/v (narrower = smaller, faster adapter); None = the LLM's width
    gate: str = "selective"  # "selective" (sigmoid of W_g·LN(h)) | "open" (control: gate fixed to 1)


@dataclass
class ReadoutCfg:
    levels: list[str] = field(default_factory=lambda: ["1", "2", "3", "4", "5"])  # single tokens each
    values: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0, 5.0])  # rating of each level


@dataclass
class ModelCfg:
    name: str = "custom"
    vision: VisionCfg = field(default_factory=VisionCfg)
    projector_type: str = "mlp2x_gelu"
    lm: LMCfg = field(default_factory=LMCfg)
    fusion: FusionCfg = field(default_factory=FusionCfg)
    readout: ReadoutCfg = field(default_factory=ReadoutCfg)
    description: str = ""
    demo: bool = False  # True: scores show the mechanism only, never a real aesthetic judgement

    def to_dict(self) -> JSONDict:
        data = copy.deepcopy(asdict(self))
        if data["vision"].get("pool") == 1:
            del data["vision"]["pool"]  # the default: configs (and fingerprints) from before the key stay as they were
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ModelCfg:
        """Build from a :class:`ModelCfgDict` (or any mapping read from JSON): keys are checked, values are not."""
        data = copy.deepcopy(data)
        sub: dict[str, type[VisionCfg | LMCfg | FusionCfg | ReadoutCfg]] = {
            "vision": VisionCfg, "lm": LMCfg, "fusion": FusionCfg, "readout": ReadoutCfg
        }
        kwargs: dict[str, object] = {}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config key(s): {', '.join(sorted(unknown))}.")
        for key, value in data.items():
            if key in sub:
                section = cast("dict[str, object]", value)  # a JSON object (a deep copy: ours to change)
                sub_known = {f.name for f in fields(sub[key])}
                bad = set(section) - sub_known
                if bad:
                    raise ConfigError(f"unknown key(s) in model config section '{key}': {', '.join(sorted(bad))}.")
                if key == "vision":
                    for t in ("mean", "std"):
                        if section.get(t) is not None:
                            section[t] = tuple(cast("Iterable[float]", section[t]))
                build_section: Callable[..., object] = sub[key]  # the dataclasses take the values as JSON gives them
                kwargs[key] = build_section(**section)
            else:
                kwargs[key] = value
        build: Callable[..., ModelCfg] = cls
        cfg = build(**kwargs)
        if cfg.lm.quantize not in ("none", "int8"):
            raise ConfigError(f"lm.quantize must be none or int8, not '{cfg.lm.quantize}'.")
        if len(cfg.readout.levels) != len(cfg.readout.values) or len(cfg.readout.levels) < 2:
            raise ConfigError("readout.levels and readout.values must have the same length (at least 2).")
        return cfg
