"""Presets and model creation (open_clip-style factory).

A preset is a JSON file in ``model_configs/`` (file stem = preset name) holding an architecture
(``model``) and optionally a default adapter. ``create_model`` resolves weights: open_clip tags and
Hugging Face ids through their usual caches, local folders as they are, ``pkg:`` paths inside this
package (the shipped demo). With ``offline=True`` nothing touches the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from pmllm_batch.errors import ConfigError, ModelLoadError
from pmllm_batch.log import get_logger
from pmllm_batch.model.checkpoint import load_adapter, read_adapter_config
from pmllm_batch.model.config import ModelCfg, VisionCfg
from pmllm_batch.model.llm import hub_reachable, load_lm_and_tokenizer
from pmllm_batch.model.presets import get_preset, resolve_path
from pmllm_batch.model.quantize import check_quantize, quantize_lm_int8
from pmllm_batch.model.vision import VisionTower, build_vision_tower, vision_spec
from pmllm_batch.model.weights import missing_sentence, missing_weights

if TYPE_CHECKING:
    from pmllm_batch.model.pmllm import PMLLM

log = get_logger("factory")

# {section: {key: value}} merged into an architecture config, e.g. {"lm": {"quantize": "int8"}}
Overrides = Mapping[str, Mapping[str, "str | int | float | bool | None"]]


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"lm.dtype must be auto, float32, bfloat16 or float16, not '{name}'.") from None


def model_cfg_for(preset: str | None = None, checkpoint: str | None = None) -> tuple[ModelCfg, str | None]:
    """Architecture and adapter path for a preset and/or an adapter checkpoint folder.

    An explicit checkpoint carries its own architecture (``pmllm_config.json``), which wins.
    ``checkpoint="none"`` means: no adapter (fresh, zero-initialised fusion).
    """
    adapter: str | None
    if checkpoint and checkpoint != "none":
        adapter = resolve_path(checkpoint)
        meta = read_adapter_config(adapter or "")
        return ModelCfg.from_dict(meta["model"]), adapter
    data = get_preset(preset or "demo")
    cfg = ModelCfg.from_dict(data["model"])
    adapter = None if checkpoint == "none" else resolve_path(data.get("adapter"))
    return cfg, adapter


def create_model(
    preset: str | None = "demo",
    checkpoint: str | None = None,
    *,
    offline: bool = False,
    device: str | torch.device = "cpu",
    with_vision: bool = True,
    cache_dir: str | None = None,
    lm_cache_dir: str | None = None,
    overrides: Overrides | None = None,
) -> PMLLM:
    """Build a ready-to-score :class:`PMLLM`.

    Args:
        preset: preset name (``demo``, ``cpu``, ``paper``, or a user file added to model_configs).
        checkpoint: adapter folder, ``"none"`` for an untrained adapter, or None for the preset's default.
        offline: never touch the network; missing weights raise ModelLoadError naming what to download.
        device: torch device for the LLM (and the torch vision tower).
        with_vision: also build the torch vision tower (not needed when ONNX vision is used: then nothing of the
            tower is built, its width and preprocessing come from its config; see :func:`attach_vision_tower`).
        lm_cache_dir: where a GGUF LLM's safetensors conversion is cached (default: the settings' cache folder,
            $XDG_CACHE_HOME/pmllm-batch or ~/.cache/pmllm-batch).
        overrides: nested dict merged into the architecture config before building (e.g. fusion gate).
    """
    from pmllm_batch.model.pmllm import PMLLM

    cfg, adapter = model_cfg_for(preset, checkpoint)
    if overrides:
        merged = cfg.to_dict()
        for section, values in overrides.items():
            current = merged.get(section)
            merged[section] = {**(current if isinstance(current, dict) else {}), **values}
        cfg = ModelCfg.from_dict(merged)
    missing = missing_weights(cfg, cache_dir=cache_dir, with_vision=with_vision)
    if missing and not with_vision:
        # Name the vision weights too: without a cached ONNX graph the first run needs them to export it, and a
        # user fetching files should learn about all of them at once.
        missing = missing_weights(cfg, cache_dir=cache_dir, with_vision=True)
    if missing and (offline or not hub_reachable()):
        reason = "offline = true" if offline else "the Hugging Face hub cannot be reached"
        raise ModelLoadError(missing_sentence(missing, reason))
    dev = torch.device(device)
    check_quantize(cfg.lm.quantize)
    if cfg.lm.quantize != "none" and dev.type != "cpu":
        log.warning("lm.quantize = %s is for CPU inference; ignored on %s", cfg.lm.quantize, dev)
        cfg.lm.quantize = "none"  # the fingerprint then says what really runs
    vision_cfg = _resolved_vision_cfg(cfg)
    torch_tower: VisionTower | None = None
    spec = None if with_vision else vision_spec(vision_cfg, load_weights=True)
    if spec is not None:
        # ONNX vision: only the tower's width and preprocessing are needed, read off its config (nothing built)
        d_vis, pre = spec
    else:
        tower, pre = build_vision_tower(vision_cfg, offline=offline, cache_dir=cache_dir, load_weights=with_vision)
        d_vis = tower.width
        torch_tower = tower if with_vision else None
    lm_path = resolve_path(cfg.lm.name_or_path) or cfg.lm.name_or_path
    lm, tok = load_lm_and_tokenizer(
        lm_path,
        revision=cfg.lm.revision,
        offline=offline,
        dtype=_dtype(cfg.lm.dtype, dev),
        gguf=cfg.lm.gguf,
        cache_root=lm_cache_dir,
    )
    module: torch.nn.Module = lm  # PreTrainedModel.to's decorator hides its signature from type checkers
    module.to(dev)
    if torch_tower is not None:
        torch_tower.to(dev)
    model = PMLLM(cfg, torch_tower, lm, tok, pre, d_vis=d_vis)
    if adapter:
        load_adapter(model, adapter)
        log.info("loaded adapter %s", adapter)
    if cfg.lm.quantize == "int8":
        n = quantize_lm_int8(model.fused.lm, cfg.lm.decoder_layers_path)
        log.info("LLM: %d decoder-layer Linear modules as int8 (fusion, projector and head stay float32)", n)
    model.eval()
    return model


def _resolved_vision_cfg(cfg: ModelCfg) -> VisionCfg:
    """A copy of ``cfg.vision`` with its checkpoint path resolved (``cfg`` keeps ``pkg:`` paths as written: the
    fingerprint must not depend on where the package is installed)."""
    vision_cfg = ModelCfg.from_dict(cfg.to_dict()).vision
    vision_cfg.checkpoint = resolve_path(vision_cfg.checkpoint)
    return vision_cfg


def attach_vision_tower(model: PMLLM, *, offline: bool = False, cache_dir: str | None = None) -> PMLLM:
    """Build and load ``model``'s torch vision tower when it was created without one (``with_vision=False``),
    e.g. to export the ONNX graph the first time. Returns the model.

    Raises:
        ModelLoadError: the tower's weights are missing (one sentence naming them), or it does not match the
            width the model's projector was built for.
    """
    if model.tower is not None:
        return model
    missing = missing_weights(model.cfg, cache_dir=cache_dir, with_vision=True)
    if missing and (offline or not hub_reachable()):
        reason = "offline = true" if offline else "the Hugging Face hub cannot be reached"
        raise ModelLoadError(missing_sentence(missing, reason))
    tower, pre = build_vision_tower(_resolved_vision_cfg(model.cfg), offline=offline, cache_dir=cache_dir)
    if tower.width != model.d_vis or pre.image_size != model.preprocess.image_size:
        raise ModelLoadError(
            f"the vision tower built for {model.cfg.name} (width {tower.width}, {pre.image_size} px) does not match "
            f"the one its config describes (width {model.d_vis}, {model.preprocess.image_size} px)."
        )
    model.tower = tower.to(model.device)
    model.preprocess = pre
    return model
