"""What ranking at the paper's shapes costs on N GPUs: an ESTIMATE from counted FLOPs and an assumed GPU efficiency.

    python -m pmllm_batch.bench.cost                        # 10 M photos x 1,000 profiles on 8 / 64 / 512 GPUs
    python -m pmllm_batch.bench.cost --photos 1e6 --profiles 100 --gpus 8 64 --gemm-of-peak 0.5
    python -m pmllm_batch.bench.cost --count                # count the FLOPs again (meta tensors, about 30 s)

**Counted** (:func:`count_paper_flops`, recorded in :data:`PAPER_FLOPS`): FLOPs of each stage at the paper preset's
shapes, by torch's dispatcher (``FlopCounterMode``, as bench section 5 counts them) on the real module graph built on
the meta device (shapes only, no weights): CLIP ViT-L/14 at 336 px to its second-to-last block, pooled 2 x 2 to 144
features of 1,024; the ``mlp2x_gelu`` projector; a Llama-3-8B-shaped LLM (32 layers, hidden 4,096, 8 KV heads, MLP
14,336) with selective fusion on layers 0-2; the demo tokenizer's prompt for the first bench persona (a 212-token
prefix, a 4-token suffix; Llama-3's own chat template would make the suffix about 6 tokens: ``--suffix-tokens 6``).

**Assumed**: the rate a GPU sustains, as a fraction of its datasheet peak (dense bf16; H100 SXM and H200: 989
TFLOP/s) = the fraction of the large-GEMM rate the bench measured for the stage (``llm_gemm_fraction`` 0.78,
``vision_gemm_fraction`` 0.75: cpu-preset shapes, docs/PERFORMANCE.md) x the fraction of peak a large bf16 GEMM
reaches on the GPU (``--gemm-of-peak``, 0.70 by default: an assumption, not measured here, since no GPU was lent to
this project). Ray and the database are taken to scale linearly (``--scaling`` below 1 says otherwise; the bench's
section 9 measures the 1- and 2-actor figures on CPU). Nothing here was run on a GPU.

Per actor (one per GPU) each profile's persona prefix is encoded once; vision runs once per photo; every pair runs
the suffix against the cached prefix. Without the prefix cache a pair would also run the whole prefix (the
"full prompt" row, approximated as prefix + suffix FLOPs per pair).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .timing import count_flops

if TYPE_CHECKING:
    from pmllm_batch.model.pmllm import PMLLM

# Llama-3-8B's shapes (export/paper_shapes.py imports them to build the same model with random weights and time it)
LLAMA3_8B: dict[str, float] = {
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class PaperFlops:
    """FLOPs of each stage at the paper's shapes, counted by :func:`count_paper_flops` (one photo, one pair)."""

    vision_per_photo: int  # the tower, pixels -> 144 pooled features
    projector_per_photo: int  # features -> LLM tokens (once per photo, every profile)
    prefix_per_profile: int  # the persona prefix, once per profile and actor
    cached_per_pair: int  # the suffix against the cached prefix (fusion on 3 layers): the per-pair cost
    suffix_token: int  # what one more suffix token adds per pair
    prefix_tokens: int
    suffix_tokens: int
    layers: int

    def per_pair(self, suffix_tokens: int | None = None) -> float:
        """FLOPs per pair for a suffix of ``suffix_tokens`` (default: the counted one)."""
        extra = 0 if suffix_tokens is None else suffix_tokens - self.suffix_tokens
        return float(self.cached_per_pair + extra * self.suffix_token)


# Counted on 2026-12-03 with torch 2.14.1 / transformers 5.24.0 (python -m pmllm_batch.bench.cost --count)
PAPER_FLOPS = PaperFlops(
    vision_per_photo=366_033_858_560,
    projector_per_photo=6_039_797_760,
    prefix_per_profile=2_982_796_066_816,
    cached_per_pair=86_514_900_992,
    suffix_token=14_383_579_136,
    prefix_tokens=212,
    suffix_tokens=4,
    layers=32,
)

PEAK_BF16_FLOPS = 989e12  # NVIDIA H100 SXM / H200 datasheet, dense bf16 (no sparsity)
LLM_GEMM_FRACTION = 0.78  # bench `llm_gemm_fraction`, cpu preset (docs/PERFORMANCE.md): measured, on CPU
VISION_GEMM_FRACTION = 0.75  # bench `vision_gemm_fraction`, the same run
GEMM_OF_PEAK = 0.70  # assumed: a large bf16 GEMM's share of the datasheet peak on the GPU (not measured here)
GPU_COUNTS = (8, 64, 512)


@dataclass(frozen=True)
class Assumptions:
    """The rate side of the estimate (see the module's docstring)."""

    peak_flops: float = PEAK_BF16_FLOPS
    llm_gemm_fraction: float = LLM_GEMM_FRACTION
    vision_gemm_fraction: float = VISION_GEMM_FRACTION
    gemm_of_peak: float = GEMM_OF_PEAK
    scaling: float = 1.0  # the cluster's throughput per GPU against one GPU alone
    suffix_tokens: int | None = None  # None: the counted suffix

    @property
    def llm_rate(self) -> float:
        return self.peak_flops * self.llm_gemm_fraction * self.gemm_of_peak

    @property
    def vision_rate(self) -> float:
        return self.peak_flops * self.vision_gemm_fraction * self.gemm_of_peak


@dataclass(frozen=True)
class Estimate:
    """The work of ``photos`` x ``profiles`` and the hours it takes (an estimate)."""

    photos: int
    profiles: int
    pairs: int
    flops_per_pair: float
    suffix_tokens: int  # the per-pair suffix flops_per_pair is for
    llm_flops: float  # pairs x flops_per_pair
    vision_flops: float  # photos x (tower + projector)
    prefix_flops_per_actor: float  # profiles x prefix
    gpu_hours: float  # on one GPU: vision + prefixes + pairs
    hours: dict[int, float]  # N GPUs (one actor each) -> wall-clock hours
    full_prompt_gpu_hours: float  # the same pairs without the persona-prefix cache (approximate)


def estimate(photos: int, profiles: int, gpus: Sequence[int] = GPU_COUNTS, *, flops: PaperFlops = PAPER_FLOPS,
             rate: Assumptions | None = None) -> Estimate:
    """Hours to rank ``photos`` for ``profiles`` on each count of ``gpus`` (one scoring actor per GPU)."""
    a = rate or Assumptions()
    pairs = int(photos) * int(profiles)
    per_pair = flops.per_pair(a.suffix_tokens)
    llm = pairs * per_pair
    vision = photos * float(flops.vision_per_photo + flops.projector_per_photo)
    prefix = profiles * float(flops.prefix_per_profile)

    def seconds(n: int) -> float:  # vision and pairs split over n GPUs; every actor encodes every prefix
        return (vision / a.vision_rate + (llm + n * prefix) / a.llm_rate) / (n * a.scaling)

    full = pairs * (per_pair + flops.prefix_per_profile) / a.llm_rate
    return Estimate(photos=int(photos), profiles=int(profiles), pairs=pairs, flops_per_pair=per_pair,
                    suffix_tokens=a.suffix_tokens or flops.suffix_tokens, llm_flops=llm,
                    vision_flops=vision, prefix_flops_per_actor=prefix, gpu_hours=seconds(1) / 3600,
                    hours={int(n): seconds(int(n)) / 3600 for n in gpus},
                    full_prompt_gpu_hours=(vision / a.vision_rate + full) / 3600)


def _hours(h: float) -> str:
    return f"{h:,.1f} h ({h / 24:,.1f} days)" if h >= 48 else f"{h:,.1f} h" if h >= 1 else f"{h * 60:,.0f} min"


def markdown(est: Estimate, rate: Assumptions | None = None, low: Estimate | None = None,
             low_rate: Assumptions | None = None) -> str:
    """The arithmetic and the table (docs/RAY.md, README), labelled an estimate."""
    a = rate or Assumptions()
    lines = [
        f"ESTIMATE: {est.photos:,} photos x {est.profiles:,} profiles = {est.pairs:,} pairs, paper shapes.",
        "",
        f"- per pair (counted, {est.suffix_tokens}-token suffix): {est.flops_per_pair / 1e9:,.1f} GFLOP -> "
        f"{est.llm_flops:.3g} FLOP for the pairs",
        f"- per photo (counted): {(PAPER_FLOPS.vision_per_photo + PAPER_FLOPS.projector_per_photo) / 1e9:,.0f} GFLOP "
        f"vision + projector -> {est.vision_flops:.3g} FLOP",
        f"- per profile and actor (counted): {PAPER_FLOPS.prefix_per_profile / 1e12:,.2f} TFLOP persona prefix -> "
        f"{est.prefix_flops_per_actor:.3g} FLOP per actor",
        f"- rate (assumed): {a.peak_flops / 1e12:,.0f} TFLOP/s peak x {a.llm_gemm_fraction:.2f} (bench stage/GEMM) x "
        f"{a.gemm_of_peak:.2f} (GEMM/peak) = {a.llm_rate / 1e12:,.0f} TFLOP/s per GPU for the LLM"
        + (f", scaling {a.scaling:.2f}" if a.scaling != 1.0 else ""),
        f"- one GPU: {_hours(est.gpu_hours)}; without the prefix cache: {_hours(est.full_prompt_gpu_hours)}",
        "",
        "| GPUs | hours (estimate)" + (f" | at {low_rate.gemm_of_peak:.2f} GEMM/peak" if low and low_rate else "")
        + " |",
        "|---|---|" + ("---|" if low else ""),
    ]
    for n, h in est.hours.items():
        lines.append(f"| {n:,} | {_hours(h)}" + (f" | {_hours(low.hours[n])}" if low else "") + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Counting (meta tensors: the module graph at full size, no weights)
# ----------------------------------------------------------------------------------------------------------------------


def count_paper_flops(layers: int = 32, vision: bool = True) -> PaperFlops:
    """Count every stage's FLOPs at the paper's shapes on the meta device (see the module's docstring).

    ``vision=False`` leaves the tower out (its figures are then :data:`PAPER_FLOPS`'s): building ViT-L/14 is most of
    the time this takes.
    """
    import torch

    from pmllm_batch.bench.inputs import BENCH_PROFILES
    from pmllm_batch.model.prompts import PromptTokens, render_persona

    model = _meta_model(layers, vision)
    persona = render_persona(BENCH_PROFILES[0])
    with torch.inference_mode():
        if vision:
            s = model.preprocess.image_size
            pixels = torch.zeros(1, 3, s, s, device="meta")
            encoder = model.vision_encoder()
            features = encoder(pixels)
        else:
            features = torch.zeros(1, 144, model.d_vis, device="meta")
        tokens = model.project(features)
        prefix = model.encode_prefix(persona)
    suffix = prefix.prompt.suffix_ids
    longer = dataclasses.replace(prefix, prompt=PromptTokens(prefix.prompt.prefix_ids, [*suffix, suffix[-1]]))
    cached = count_flops(lambda: model.score_cached(prefix, tokens))
    return PaperFlops(
        vision_per_photo=count_flops(lambda: encoder(pixels)) if vision else PAPER_FLOPS.vision_per_photo,
        projector_per_photo=count_flops(lambda: model.project(features)),
        prefix_per_profile=count_flops(lambda: model.encode_prefix(persona)),
        cached_per_pair=cached,
        suffix_token=count_flops(lambda: model.score_cached(longer, tokens)) - cached,
        prefix_tokens=len(prefix.prompt.prefix_ids),
        suffix_tokens=len(suffix),
        layers=layers,
    )


def _meta_model(layers: int, vision: bool) -> PMLLM:
    """The paper preset's model on the meta device: ViT-L/14-336 (random init, nothing downloaded) or no tower, a
    Llama-3-8B-shaped LLM of ``layers`` layers, fusion on its first three, the demo tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pmllm_batch.model.config import ModelCfg
    from pmllm_batch.model.pmllm import PMLLM
    from pmllm_batch.model.presets import get_preset
    from pmllm_batch.model.vision import VisionTower
    from pmllm_batch.preprocess_cfg import PreprocessCfg

    from .models import DEMO_TOKENIZER

    tok = AutoTokenizer.from_pretrained(str(DEMO_TOKENIZER))
    cfg = ModelCfg.from_dict(get_preset("paper")["model"])
    cfg = dataclasses.replace(cfg, fusion=dataclasses.replace(
        cfg.fusion, layer_ids=[i for i in cfg.fusion.layer_ids if i < layers]))
    shapes: dict[str, object] = {**LLAMA3_8B, "vocab_size": max(int(LLAMA3_8B["vocab_size"]), len(tok))}
    lcfg = LlamaConfig(**shapes, num_hidden_layers=layers, bos_token_id=tok.bos_token_id,  # type: ignore[arg-type]
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    tower, pre = None, PreprocessCfg(336, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with torch.device("meta"):
        if vision:
            import open_clip

            from pmllm_batch.runtime.preprocess import preprocess_cfg_from_open_clip

            v = cfg.vision
            visual = open_clip.create_model(v.model_name, pretrained=None, device="meta").visual
            pre = preprocess_cfg_from_open_clip(visual)
            tower = VisionTower(visual, select_layer=v.select_layer, select_feature=v.select_feature, pool=v.pool)
        lm = LlamaForCausalLM._from_config(lcfg, dtype=torch.bfloat16).eval()
        return PMLLM(cfg, tower, lm, tok, pre, d_vis=1024).eval()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pmllm_batch.bench.cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=float, default=10e6, help="photos (default 10 M)")
    p.add_argument("--profiles", type=float, default=1000, help="profiles (default 1,000)")
    p.add_argument("--gpus", type=int, nargs="+", default=list(GPU_COUNTS), help="GPU counts (default 8 64 512)")
    p.add_argument("--peak-tflops", type=float, default=PEAK_BF16_FLOPS / 1e12, help="dense bf16 peak per GPU")
    p.add_argument("--gemm-of-peak", type=float, default=GEMM_OF_PEAK, help="a large GEMM's share of peak (assumed)")
    p.add_argument("--low", type=float, default=0.35, help="a pessimistic --gemm-of-peak for a second column")
    p.add_argument("--scaling", type=float, default=1.0, help="cluster throughput per GPU against one GPU alone")
    p.add_argument("--suffix-tokens", type=int, default=None, help="per-pair suffix tokens (default: as counted)")
    p.add_argument("--count", action="store_true", help="count the FLOPs again on the meta device and print them")
    args = p.parse_args(argv)
    flops = PAPER_FLOPS
    if args.count:
        flops = count_paper_flops()
        print(flops)
    rate = Assumptions(peak_flops=args.peak_tflops * 1e12, gemm_of_peak=args.gemm_of_peak, scaling=args.scaling,
                       suffix_tokens=args.suffix_tokens)
    low_rate = dataclasses.replace(rate, gemm_of_peak=args.low)
    photos, profiles = int(args.photos), int(args.profiles)
    est = estimate(photos, profiles, args.gpus, flops=flops, rate=rate)
    low = estimate(photos, profiles, args.gpus, flops=flops, rate=low_rate)
    print(markdown(est, rate, low, low_rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
