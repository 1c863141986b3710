"""Section 5: achieved GFLOP/s of each stage against this machine's measured large-GEMM rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pmllm_batch.profiles import Profile

from .machine import GemmResult
from .prefix_cache import PrefixCacheResult
from .timing import count_flops
from .vision import VisionResult

if TYPE_CHECKING:
    import torch

    from pmllm_batch.model.pmllm import PMLLM


@dataclass
class StageFlops:
    """FLOPs of one unit of each stage's work, counted by torch's dispatcher."""

    vision_flops_per_image: int
    llm_cached_flops_per_pair: int
    llm_full_flops_per_pair: int
    prefix_flops_per_profile: int


@dataclass
class StageRate:
    """A stage's achieved GFLOP/s and its fraction of the matching large-GEMM rate (gflops / limit_gflops)."""

    gflops: float
    limit_gflops: float
    fraction: float


@dataclass
class LimitResult:
    """Section 5's figures (the JSON object ``limit``)."""

    threads: int
    gemm: GemmResult
    flops: StageFlops
    # vision_torch, vision_onnx_fp32, vision_onnx_int8 (against the int8 GEMM), llm_cached, llm_full
    stages: dict[str, StageRate]
    vision_gemm_fraction: float  # stages["vision_onnx_int8"].fraction
    vision_int8_vs_fp32_gemm_fraction: float
    llm_gemm_fraction: float  # stages["llm_cached"].fraction


def measure_flops(model: PMLLM, pixels: np.ndarray, visual: torch.Tensor, profile: Profile) -> StageFlops:
    """FLOPs per image (vision encoder) and per (image, profile) pair (cached suffix, full prompt)."""
    import torch

    from pmllm_batch.model.prompts import render_persona

    encoder = model.vision_encoder()
    one = torch.from_numpy(np.ascontiguousarray(pixels[:1]))
    persona = render_persona(profile)
    with torch.inference_mode():
        prefix = model.encode_prefix(persona)
    prompt = model.prompt(persona)
    v1 = visual[:1]
    return StageFlops(
        vision_flops_per_image=count_flops(lambda: encoder(one)),
        llm_cached_flops_per_pair=count_flops(lambda: model.score_cached(prefix, v1)),
        llm_full_flops_per_pair=count_flops(lambda: model.score_full(prompt, v1)),
        prefix_flops_per_profile=count_flops(lambda: model.encode_prefix(persona)),
    )


def against_limit(flops: StageFlops, gemm: GemmResult, vision: VisionResult, prefix: PrefixCacheResult) -> LimitResult:
    """Achieved GFLOP/s of each stage and its fraction of the matching large-GEMM rate (engine, precision)."""
    fp = flops.vision_flops_per_image
    rows = {
        "vision_torch": (fp * vision.torch.images_per_s, gemm.torch_fp32_gflops),
        "vision_onnx_fp32": (fp * vision.onnx_fp32.images_per_s, gemm.onnx_fp32_gflops),
        # int8 does the same multiply-adds as fp32; its practical limit is the int8 GEMM, not the fp32 one
        "vision_onnx_int8": (fp * vision.onnx_int8.images_per_s, gemm.onnx_int8_gflops),
        "llm_cached": (flops.llm_cached_flops_per_pair * prefix.prefix_cache_pairs_per_s, gemm.torch_fp32_gflops),
        "llm_full": (flops.llm_full_flops_per_pair * prefix.full_prompt_pairs_per_s, gemm.torch_fp32_gflops),
    }
    stages = {
        name: StageRate(gflops=achieved / 1e9, limit_gflops=limit, fraction=achieved / 1e9 / limit)
        for name, (achieved, limit) in rows.items()
    }
    return LimitResult(
        threads=gemm.threads,
        gemm=gemm,
        flops=flops,
        stages=stages,
        vision_gemm_fraction=stages["vision_onnx_int8"].fraction,
        vision_int8_vs_fp32_gemm_fraction=stages["vision_onnx_int8"].gflops / gemm.torch_fp32_gflops,
        llm_gemm_fraction=stages["llm_cached"].fraction,
    )
