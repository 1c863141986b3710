"""The models a bench runs: the shipped demo model, or a random-weight model at the ``cpu`` preset's shapes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pmllm_batch.errors import ConfigError

from .inputs import SEED

PRESETS = ("demo", "cpu")
DEMO_TOKENIZER = Path(__file__).resolve().parents[1] / "assets" / "demo" / "lm"

# Qwen2.5-0.5B-Instruct's shape (its config.json), for the random-weight ``cpu`` LLM.
QWEN25_05B: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}


@contextlib.contextmanager
def _quiet_root_warnings() -> Iterator[None]:
    """open_clip warns "No pretrained weights loaded" through the *root* logger, which would also install a
    root handler; random weights are the point here, so the warning is dropped for the duration."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    level = root.level
    root.addHandler(guard)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        root.removeHandler(guard)


def check_preset(preset: str) -> None:
    """Raises: ConfigError: a preset other than ``demo`` or ``cpu``."""
    if preset not in PRESETS:
        raise ConfigError(f"bench runs the presets {', '.join(PRESETS)}, not '{preset}'.")


def random_cpu_model(seed: int = SEED) -> Any:
    """A PMLLM with the ``cpu`` preset's shapes and random weights (nothing is downloaded).

    open_clip ViT-B/32 (QuickGELU, as the openai weights use) + ``mlp2x_gelu`` projector + a Qwen2.5-0.5B-shaped
    LLM, the demo tokenizer (its ids are < the vocabulary size; digits 1–5 are single tokens), and a random
    fusion adapter: ``to_out`` is perturbed so the fusion blocks are not the identity. Deterministic for a seed,
    so a child process builds the very same model (and finds the same ONNX export in the cache).
    """
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from pmllm_batch.model.config import ModelCfg
    from pmllm_batch.model.factory import get_preset
    from pmllm_batch.model.fusion import SelectiveFusionBlock
    from pmllm_batch.model.pmllm import PMLLM
    from pmllm_batch.model.vision import build_vision_tower

    cfg = ModelCfg.from_dict(get_preset("cpu")["model"])
    # A name of its own keeps the fingerprint (and every cache key) apart from the real cpu preset's.
    cfg.name = "cpu-random"
    cfg.description = "random weights, cpu-preset shapes (CLIP ViT-B/32, Qwen2.5-0.5B); for timing only"
    cfg.lm.name_or_path = "random-init:Qwen2.5-0.5B-shapes"
    torch.manual_seed(seed)
    with _quiet_root_warnings():
        tower, pre = build_vision_tower(cfg.vision, offline=True, load_weights=False)
    lm = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B)).eval()
    tok = AutoTokenizer.from_pretrained(str(DEMO_TOKENIZER))
    model = PMLLM(cfg, tower, lm, tok, pre)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.fused.fusion_blocks.values():
            assert isinstance(block, SelectiveFusionBlock)
            block.to_out.weight.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def build_bench_model(preset: str, seed: int = SEED) -> tuple[Any, str]:
    """The model a preset's bench runs, and a label that says what its weights are.

    Raises:
        ConfigError: a preset other than ``demo`` or ``cpu``.
    """
    check_preset(preset)
    if preset == "demo":
        from pmllm_batch.model.factory import create_model

        model = create_model("demo", offline=True, device="cpu", with_vision=True)
        return model, "demo weights (shipped tiny model; scores show the mechanism only)"
    return random_cpu_model(seed), "random weights, cpu-preset shapes"
