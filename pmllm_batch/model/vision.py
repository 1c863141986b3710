"""Vision tower: an open_clip ViT whose patch outputs are the photo's *features* (LLaVA convention by default).

Naming (see :mod:`pmllm_batch.contracts`): the tower outputs **features** (N, D_vis), what the cache stores; the
projector turns them into **tokens** (N, D_lm). Only this module and ``export/`` import open_clip; the ONNX runtime
path does not need it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from pmllm_batch.errors import ModelLoadError
from pmllm_batch.log import get_logger
from pmllm_batch.model.config import VisionCfg
from pmllm_batch.preprocess_cfg import PreprocessCfg

log = get_logger("vision")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class _OpenClipBlocks(Protocol):
    resblocks: nn.ModuleList
    width: int


class OpenClipVisual(Protocol):
    """What is used of an open_clip ``VisionTransformer`` (``model.visual``, an nn.Module; open_clip ships no types)."""

    transformer: _OpenClipBlocks
    patch_size: tuple[int, int]
    image_size: tuple[int, int]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        stop_early: bool = False,
        normalize_intermediates: bool = False,
        intermediates_only: bool = False,
        output_fmt: str = "NCHW",
        output_extra_tokens: bool = False,
    ) -> dict[str, list[torch.Tensor]]: ...  # intermediates_only: lists of tensors only

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def train(self, mode: bool = True) -> nn.Module: ...

    def eval(self) -> nn.Module: ...

    def requires_grad_(self, requires_grad: bool = True) -> nn.Module: ...


class VisionTower(nn.Module):
    """Frozen open_clip ``VisionTransformer`` → tower features (one per patch, CLS first when kept).

    Args:
        visual: an open_clip ``VisionTransformer`` (``model.visual``).
        select_layer: which block's output to take; negative counts from the end (-2 = penultimate).
        select_feature: ``"patch"`` (drop CLS, LLaVA) or ``"cls_patch"`` (keep it first).
        pool: average-pool the patch grid ``pool``×``pool`` (1 = no pooling); CLS, when kept, is not pooled.
    """

    visual: OpenClipVisual

    def __init__(
        self, visual: OpenClipVisual, select_layer: int = -2, select_feature: str = "patch", pool: int = 1
    ) -> None:
        super().__init__()
        if int(pool) < 1:
            raise ModelLoadError(f"vision.pool must be 1 or more, not {pool}.")
        self.pool = int(pool)
        if select_feature not in ("patch", "cls_patch"):
            raise ModelLoadError(f"vision.select_feature must be 'patch' or 'cls_patch', not '{select_feature}'.")
        self.visual = visual
        n_blocks = len(visual.transformer.resblocks)
        index = select_layer if select_layer >= 0 else n_blocks + select_layer
        if not 0 <= index < n_blocks:
            raise ModelLoadError(f"vision.select_layer {select_layer} is outside a tower of {n_blocks} blocks.")
        self.block_index = index
        self.select_feature = select_feature
        self.width: int = int(visual.transformer.width)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VisionTower:  # the tower is frozen: never leave eval mode
        return super().train(False)

    def num_features(self, image_size: int) -> int:
        """Features per photo (n_feat) at ``image_size``: the patch grid after ``pool``, plus CLS when kept."""
        patch = self.visual.patch_size[0]
        side = -(-(image_size // patch) // self.pool)
        return side**2 + (1 if self.select_feature == "cls_patch" else 0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Args: pixel_values, shape (B, 3, S, S), normalised. Returns: features, shape (B, n_feat, D_vis)."""
        out = self.visual.forward_intermediates(
            pixel_values,
            indices=[self.block_index],
            stop_early=True,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=self.select_feature == "cls_patch",
        )
        feats = out["image_intermediates"][0]
        if self.pool > 1:
            _, n, d = feats.shape
            side = int(round(n**0.5))
            grid = feats.transpose(1, 2).reshape(-1, d, side, side)
            grid = torch.nn.functional.avg_pool2d(grid, self.pool, ceil_mode=True)
            feats = grid.flatten(2).transpose(1, 2)
        if self.select_feature == "cls_patch":
            feats = torch.cat([out["image_intermediates_prefix"][0], feats], dim=1)
        return feats


class VisionEncoder(nn.Module):
    """The vision tower as exported to ONNX (``pixel_values`` → features, before the projector).

    What it outputs is what the feature cache keeps: the frozen tower's features (pooled when ``vision.pool`` > 1),
    not the projector's tokens. They are smaller (D_vis, not D_lm, each), and they stay valid when the adapter
    (projector + fusion) is retrained: only a new tower invalidates them. The projector runs at score time
    (:meth:`pmllm_batch.model.pmllm.PMLLM.project`), a small per-feature MLP.
    """

    def __init__(self, tower: VisionTower) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Args: pixel_values (B, 3, S, S) float32. Returns: features (B, n_feat, D_vis)."""
        return self.tower(pixel_values)


@dataclass
class TowerExport:
    """A model's torch vision tower as ``runtime`` exports and runs it (:class:`pmllm_batch.contracts.ExportableTower`):
    the module and the facts the artefact records, so the runtime layer never sees the model."""

    module: nn.Module  # a VisionEncoder: pixels (N, 3, S, S) → features (N, n_feat, D_vis)
    preprocess: PreprocessCfg
    num_features: int
    dim: int  # D_vis
    name: str  # the model config's name

    @classmethod
    def of(cls, tower: VisionTower, preprocess: PreprocessCfg, name: str) -> TowerExport:
        return cls(VisionEncoder(tower), preprocess, tower.num_features(preprocess.image_size), tower.width, name)


# --------------------------------------------------------------------------------------------------
# Building and loading
# --------------------------------------------------------------------------------------------------


def _find_cached_open_clip(model_name: str, tag: str, cache_dir: str | None) -> str | None:
    """Path of already-downloaded open_clip weights for (model, tag), without touching the network."""
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not pcfg:
        return None
    hub = pcfg.get("hf_hub")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id = hub.rstrip("/")
        for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(repo_id, fname, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
    url = pcfg.get("url")
    if url:
        candidate = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None


def _load_safetensors_into(module: nn.Module, path: Path, what: str) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelLoadError(f"{what} weights not found at {path}.")
    state = load_file(str(path))
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError:  # shape mismatches
        missing, unexpected = ["(shape mismatch)"], []
    if missing or unexpected:
        raise ModelLoadError(
            f"{what} weights at {path} do not fit the configured architecture "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)."
        )


def vision_spec(cfg: VisionCfg, *, load_weights: bool = True) -> tuple[int, PreprocessCfg] | None:
    """The tower's width and preprocessing from its config alone, without building it (ONNX runtime path).

    Agrees with :func:`build_vision_tower` (tested): a custom ``arch`` tower and open_clip's built-in ViT configs.
    Returns None where only building tells (timm or Hugging Face towers): the caller then builds one.
    ``load_weights`` matters only for the preprocessing of an open_clip ``pretrained`` tag (its mean/std).
    """
    from dataclasses import asdict

    import open_clip
    from open_clip.model import CLIPVisionCfg

    if cfg.arch is not None:
        arch = dict(cfg.arch)
        arch.pop("embed_dim", None)
        vcfg = CLIPVisionCfg(**arch)
        image_size = int(cfg.image_size or arch.get("image_size", 224))
        mean, std = cfg.mean or OPENAI_MEAN, cfg.std or OPENAI_STD
        pre = PreprocessCfg(image_size=image_size, mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]))
        return int(vcfg.width), pre
    model_cfg = open_clip.get_model_config(cfg.model_name)
    if not model_cfg or "vision_cfg" not in model_cfg:
        return None
    vision = dict(model_cfg["vision_cfg"])
    if vision.get("timm_model_name") or vision.get("hf_model_name"):
        return None
    from open_clip.factory import merge_preprocess_dict
    from open_clip.transform import PreprocessCfg as OpenClipPreprocessCfg

    pp = merge_preprocess_dict(asdict(OpenClipPreprocessCfg()), model_cfg.get("preprocess_cfg", {}))
    if load_weights and cfg.pretrained and not cfg.checkpoint:
        pp = merge_preprocess_dict(pp, open_clip.get_pretrained_cfg(cfg.model_name, cfg.pretrained) or {})
    vcfg = CLIPVisionCfg(**{k: v for k, v in vision.items() if k in CLIPVisionCfg.__dataclass_fields__})
    pp["size"] = vcfg.image_size
    from pmllm_batch.preprocess_cfg import preprocess_cfg_from_open_clip

    class _Visual:  # what preprocess_cfg_from_open_clip reads off a built tower
        preprocess_cfg = pp

    return int(vcfg.width), preprocess_cfg_from_open_clip(_Visual())


def feature_shape(cfg: VisionCfg) -> tuple[int, int] | None:
    """(n_feat, D_vis) of the tower features a photo is cached as, from the config alone (no weights): one per
    patch after ``pool``, plus CLS when kept. None where only building tells (timm or Hugging Face towers)."""
    import open_clip

    if cfg.arch is not None:
        arch = dict(cfg.arch)
        size = int(cfg.image_size or arch.get("image_size", 224))
        patch, width = arch.get("patch_size", 16), arch["width"]
    else:
        vision = (open_clip.get_model_config(cfg.model_name) or {}).get("vision_cfg")
        if not vision or vision.get("timm_model_name") or vision.get("hf_model_name"):
            return None
        size, patch, width = int(vision["image_size"]), vision["patch_size"], vision["width"]
    side = -(-(int(size) // int(patch)) // int(cfg.pool))
    return side**2 + (1 if cfg.select_feature == "cls_patch" else 0), int(width)


def build_vision_tower(
    cfg: VisionCfg, *, offline: bool = False, cache_dir: str | None = None, load_weights: bool = True
) -> tuple[VisionTower, PreprocessCfg]:
    """Create the frozen tower and its preprocessing from a :class:`VisionCfg`.

    Weights come from ``cfg.checkpoint`` (a local file), or the open_clip ``pretrained`` tag (Hugging
    Face / open_clip caches). With ``offline`` nothing touches the network: a tag whose weights are not
    cached raises :class:`ModelLoadError` naming what to download. ``load_weights=False`` gives random
    weights of the same shape (benchmarks, paper-shape checks).
    """
    import open_clip
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    if cfg.arch is not None:
        arch = dict(cfg.arch)
        embed_dim = int(arch.pop("embed_dim", arch.get("width", 64)))
        visual = _build_vision_tower(embed_dim, CLIPVisionCfg(**arch))
        if cfg.checkpoint and load_weights:
            _load_safetensors_into(visual, Path(cfg.checkpoint), "vision tower")
        image_size = int(cfg.image_size or arch.get("image_size", 224))
        mean, std = cfg.mean or OPENAI_MEAN, cfg.std or OPENAI_STD
        pre = PreprocessCfg(image_size=image_size, mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]))
    else:
        if cfg.model_name not in open_clip.list_models():
            raise ModelLoadError(f"unknown open_clip model '{cfg.model_name}'; see open_clip.list_models().")
        pretrained: str | None = None
        kwargs: dict[str, bool] = {}
        pcfg = open_clip.get_pretrained_cfg(cfg.model_name, cfg.pretrained) if cfg.pretrained else {}
        if pcfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
        if load_weights and cfg.checkpoint:
            if not Path(cfg.checkpoint).is_file():
                raise ModelLoadError(f"vision checkpoint {cfg.checkpoint} does not exist.")
            pretrained = cfg.checkpoint
        elif load_weights and cfg.pretrained:
            if offline:
                pretrained = _find_cached_open_clip(cfg.model_name, cfg.pretrained, cache_dir)
                if pretrained is None:
                    hub = (pcfg or {}).get("hf_hub", "its open_clip source")
                    raise ModelLoadError(
                        f"open_clip weights {cfg.model_name}/{cfg.pretrained} are not in the local cache and "
                        f"offline = true; download them once with network access (Hugging Face repo "
                        f"{hub.rstrip('/')}) or set vision.checkpoint to a local file."
                    )
            else:
                pretrained = cfg.pretrained
        try:
            model = open_clip.create_model(cfg.model_name, pretrained=pretrained, cache_dir=cache_dir, **kwargs)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load open_clip {cfg.model_name} ({pretrained}): {exc}") from None
        visual = model.visual
        del model  # the text tower is never used
        from pmllm_batch.preprocess_cfg import preprocess_cfg_from_open_clip

        pre = preprocess_cfg_from_open_clip(visual)
    tower = VisionTower(visual, cfg.select_layer, cfg.select_feature, cfg.pool)
    return tower, pre
