"""Are a model's base weights here? One check before anything loads, so a user missing several files learns about
all of them at once: which file, the exact command that fetches it, and the config key that points at a local copy.

Nothing here touches the network: it looks at local paths, the Hugging Face / open_clip caches and GGUF files
shipped in Python packages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pmllm_batch.model.config import ModelCfg
from pmllm_batch.model.llm import gguf_hint, resolve_gguf
from pmllm_batch.model.presets import resolve_path

# The [model] keys a user sets to point at local weights (they exist in config.py; a test keeps it so).
VISION_KEY = "model.vision_checkpoint"
LM_KEY = "model.lm_path"
ADAPTER_KEY = "model.checkpoint"


@dataclass(frozen=True)
class MissingWeights:
    what: str  # e.g. "open_clip weights ViT-B-32/openai"
    fetch: str | None  # the command that downloads it; None for a local path that is not there
    key: str  # the config key that points at a local copy instead

    def sentence(self) -> str:
        if self.fetch is None:
            return f"{self.what} does not exist (set {self.key} to where it is)"
        return f"{self.what} (get it with `{self.fetch}`, or set {self.key} to a local copy)"


def _lm_present(cfg: ModelCfg) -> bool:
    name = resolve_path(cfg.lm.name_or_path) or cfg.lm.name_or_path
    if Path(name).expanduser().is_dir():
        return True
    if resolve_gguf(cfg.lm.gguf) is not None:
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json", revision=cfg.lm.revision)
    except Exception:  # noqa: BLE001 - not a valid repo id: then it is a missing local path
        return False
    return isinstance(found, str)


def _vision_missing(cfg: ModelCfg, cache_dir: str | None) -> MissingWeights | None:
    v = cfg.vision
    if v.checkpoint:
        path = resolve_path(v.checkpoint) or v.checkpoint
        if Path(path).expanduser().is_file():
            return None
        return MissingWeights(f"the vision checkpoint {path}", None, VISION_KEY)
    if v.arch is not None or not v.pretrained:
        return None  # a custom tower without a checkpoint has random weights on purpose
    from pmllm_batch.model.vision import _find_cached_open_clip

    if _find_cached_open_clip(v.model_name, v.pretrained, cache_dir) is not None:
        return None
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(v.model_name, v.pretrained) or {}
    hub = str(pcfg.get("hf_hub") or "").rstrip("/")
    fetch = (
        f"hf download {hub} open_clip_model.safetensors"
        if hub
        else f"python -c \"import open_clip; open_clip.create_model('{v.model_name}', pretrained='{v.pretrained}')\""
    )
    return MissingWeights(f"open_clip weights {v.model_name}/{v.pretrained}", fetch, VISION_KEY)


def missing_weights(cfg: ModelCfg, *, cache_dir: str | None = None, with_vision: bool = True) -> list[MissingWeights]:
    """Every base weight file of ``cfg`` that is not on this machine."""
    out: list[MissingWeights] = []
    if with_vision:
        vision = _vision_missing(cfg, cache_dir)
        if vision is not None:
            out.append(vision)
    if not _lm_present(cfg):
        name = cfg.lm.name_or_path
        if cfg.lm.gguf:
            fetch = gguf_hint(cfg.lm.gguf).strip("`").split("` (")[0]
            out.append(MissingWeights(f"the LLM {name} (Hugging Face cache or GGUF {cfg.lm.gguf})", fetch, LM_KEY))
        elif "/" in name and not name.startswith(("/", ".", "~")):
            out.append(MissingWeights(f"the LLM {name}", f"hf download {name}", LM_KEY))
        else:
            out.append(MissingWeights(f"the LLM folder {name}", None, LM_KEY))
    return out


def missing_sentence(missing: list[MissingWeights], reason: str) -> str:
    """One sentence for all missing files."""
    items = "; ".join(m.sentence() for m in missing)
    return f"model weights are missing and {reason}: {items}."
