"""Section 5: achieved GFLOP/s of each stage against this machine's measured large-GEMM rate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pmllm_batch.profiles import Profile

from .timing import count_flops

if TYPE_CHECKING:
    import torch


def measure_flops(model: Any, pixels: np.ndarray, visual: torch.Tensor, profile: Profile) -> dict[str, float]:
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
    return {
        "vision_flops_per_image": count_flops(lambda: encoder(one)),
        "llm_cached_flops_per_pair": count_flops(lambda: model.score_cached(prefix, v1)),
        "llm_full_flops_per_pair": count_flops(lambda: model.score_full(prompt, v1)),
        "prefix_flops_per_profile": count_flops(lambda: model.encode_prefix(persona)),
    }


def against_limit(
    flops: dict[str, float], gemm: dict[str, Any], vision: dict[str, Any], prefix: dict[str, Any]
) -> dict[str, Any]:
    """Achieved GFLOP/s of each stage and its fraction of the matching large-GEMM rate (engine, precision)."""
    fp = flops["vision_flops_per_image"]
    rows = {
        "vision_torch": (fp * vision["torch"]["images_per_s"], gemm["torch_fp32_gflops"]),
        "vision_onnx_fp32": (fp * vision["onnx_fp32"]["images_per_s"], gemm["onnx_fp32_gflops"]),
        # int8 does the same multiply-adds as fp32; its practical limit is the int8 GEMM, not the fp32 one
        "vision_onnx_int8": (fp * vision["onnx_int8"]["images_per_s"], gemm["onnx_int8_gflops"]),
        "llm_cached": (
            flops["llm_cached_flops_per_pair"] * prefix["prefix_cache_pairs_per_s"],
            gemm["torch_fp32_gflops"],
        ),
        "llm_full": (flops["llm_full_flops_per_pair"] * prefix["full_prompt_pairs_per_s"], gemm["torch_fp32_gflops"]),
    }
    out: dict[str, Any] = {"threads": gemm["threads"], "gemm": gemm, "flops": flops, "stages": {}}
    for name, (achieved, limit) in rows.items():
        out["stages"][name] = {"gflops": achieved / 1e9, "limit_gflops": limit, "fraction": achieved / 1e9 / limit}
    out["vision_gemm_fraction"] = out["stages"]["vision_onnx_int8"]["fraction"]
    out["vision_int8_vs_fp32_gemm_fraction"] = out["stages"]["vision_onnx_int8"]["gflops"] / gemm["torch_fp32_gflops"]
    out["llm_gemm_fraction"] = out["stages"]["llm_cached"]["fraction"]
    return out
