"""Section 6: the int8 LLM stage (``lm.quantize = "int8"``) against float32, and the int8 schemes it was chosen over.

The LLM stage is what the scorer runs per (image, profile) pair: :meth:`PMLLM.score_cached`, the suffix against a
profile's cached persona prefix. Every arm scores the same visual tokens for the same profiles, interleaved round
by round, and is compared with float32 per profile (Spearman over the photos, max abs difference of the scores).

Arms: ``int8`` (shipped, model/quantize.py) always; with ``compare=True`` also torch's
``quantize_dynamic`` (fbgemm/x86, one activation scale per tensor) and, when ``optimum-quanto`` is installed, its
weight-only int8 (``quantize(weights=qint8)`` + ``freeze``). Each arm quantises a deep copy of the decoder layers'
Linear modules only (fusion blocks, projector and head stay float32).
"""

from __future__ import annotations

import copy
import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pmllm_batch.profiles import Profile

from .timing import interleaved, stats

if TYPE_CHECKING:
    import torch

SPEARMAN_TARGET = 0.99
MAX_ABS_TARGET = 0.05


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 1.0 for two constant sequences."""
    import numpy as np

    def ranks(x: Sequence[float]) -> Any:
        arr = np.asarray(x, dtype=np.float64)
        order = arr.argsort(kind="stable")
        r = np.empty(len(arr))
        r[order] = np.arange(len(arr), dtype=np.float64)
        for v in np.unique(arr):  # ties share their mean rank
            idx = arr == v
            r[idx] = r[idx].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return 1.0 if den == 0 else float((ra * rb).sum() / den)


def _decoder_inner_layers(model: Any) -> list[Any]:
    from pmllm_batch.model.fused_lm import FusedDecoderLayer, decoder_layers

    layers = decoder_layers(model.fused.lm, model.cfg.lm.decoder_layers_path)
    return [layer.layer if isinstance(layer, FusedDecoderLayer) else layer for layer in layers]


def quantize_in_place(model: Any) -> Any:
    """``model`` with the shipped int8 LLM (what ``create_model`` does for ``lm.quantize = "int8"``)."""
    from pmllm_batch.model.quantize import quantize_lm_int8

    quantize_lm_int8(model.fused.lm, model.cfg.lm.decoder_layers_path)
    model.cfg.lm.quantize = "int8"
    return model.eval()


def int8_copy(model: Any) -> Any:
    """A deep copy of ``model`` with the shipped int8 LLM."""
    tower, model.tower = model.tower, None  # the vision tower is not part of the LLM stage: not copied
    try:
        q = copy.deepcopy(model)
    finally:
        model.tower = tower
    return quantize_in_place(q)


def _torch_dynamic_copy(model: Any) -> Any:
    import torch
    from torch.ao.quantization import quantize_dynamic

    tower, model.tower = model.tower, None
    try:
        q = copy.deepcopy(model)
    finally:
        model.tower = tower
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        for layer in _decoder_inner_layers(q):
            quantize_dynamic(layer, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return q.eval()


def _quanto_copy(model: Any) -> Any | None:
    try:
        from optimum.quanto import freeze, qint8, quantize
    except ImportError:
        return None
    tower, model.tower = model.tower, None
    try:
        q = copy.deepcopy(model)
    finally:
        model.tower = tower
    for layer in _decoder_inner_layers(q):
        quantize(layer, weights=qint8)
        freeze(layer)
    return q.eval()


def measure_llm_int8(
    model: Any,
    visual: torch.Tensor,
    profiles: Sequence[Profile],
    *,
    repeats: int = 3,
    compare: bool = False,
) -> dict[str, Any]:
    """float32 against int8 LLM stage on the same visual tokens (B photos) for each profile.

    One timed call of an arm scores all B photos for every profile (one ``score_cached`` per profile); the
    speedup is the ratio of the medians. Parity per profile: Spearman over the B photos and max abs difference of
    the scores (1–5 scale), against float32; the headline takes the worst profile.

    Args:
        model: a float32 PMLLM on CPU.
        visual: (B, N, D_lm) visual tokens of B distinct images.
        profiles: the personas.
        repeats: timed calls per arm.
        compare: also time torch ``quantize_dynamic`` and (if installed) optimum-quanto weight-only int8.
    """
    import torch

    arms_models: dict[str, Any] = {"fp32": model, "int8": int8_copy(model)}
    skipped: dict[str, str] = {}
    if compare:
        arms_models["torch_dynamic"] = _torch_dynamic_copy(model)
        quanto = _quanto_copy(model)
        if quanto is None:
            skipped["quanto_w8"] = "optimum-quanto is not installed (pip install optimum-quanto)"
        else:
            arms_models["quanto_w8"] = quanto
    scores: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        prefixes = {k: [m.encode_prefix(p) for p in profiles] for k, m in arms_models.items()}

        def arm(name: str) -> Callable[[], None]:
            def call() -> None:
                m = arms_models[name]
                scores[name] = [m.score_cached(p, visual).scores.clone() for p in prefixes[name]]

            return call

        times = interleaved({k: arm(k) for k in arms_models}, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = scores["fp32"]
    out: dict[str, Any] = {
        "images": int(visual.shape[0]),
        "profiles": [p.name for p in profiles],
        "suffix_tokens": len(prefixes["fp32"][0].prompt.suffix_ids),
        "arms": {},
        "skipped": skipped,
        "score_range_fp32": [float(s.max() - s.min()) for s in ref],
    }
    for name in arms_models:
        per = [
            {"spearman": spearman(r.tolist(), s.tolist()), "max_abs_diff": float((r - s).abs().max())}
            for r, s in zip(ref, scores[name], strict=True)
        ]
        out["arms"][name] = {
            **stats(times[name]),
            "pairs_per_s": len(profiles) * int(visual.shape[0]) / med[name],
            "speedup_vs_fp32": med["fp32"] / med[name],
            "per_profile": per,
            "spearman_min": min(p["spearman"] for p in per),
            "max_abs_diff": max(p["max_abs_diff"] for p in per),
        }
    shipped = out["arms"]["int8"]
    out["llm_int8_speedup"] = shipped["speedup_vs_fp32"]
    out["llm_int8_score_spearman"] = shipped["spearman_min"]
    out["llm_int8_score_max_abs_diff"] = shipped["max_abs_diff"]
    out["parity"] = shipped["spearman_min"] >= SPEARMAN_TARGET and shipped["max_abs_diff"] <= MAX_ABS_TARGET
    return out


def distinct_images_visual(model: Any, n: int, seed: int = 0) -> torch.Tensor:
    """Visual tokens of ``n`` distinct synthetic renders (the demo/smol training distribution) at the model's size.

    Parity is measured on these rather than on the bench's photo variants: variants of one photo score almost
    alike, so their order among themselves is noise, which a rank correlation would count as disagreement.
    """
    import numpy as np
    import torch

    from pmllm_batch.runtime.preprocess import preprocess_image
    from pmllm_batch.train.synthetic import render_image, sample_image_params

    rng = np.random.default_rng(seed)
    size = model.preprocess.image_size
    pixels = np.stack(
        [preprocess_image(render_image(sample_image_params(rng), rng, size), model.preprocess) for _ in range(n)]
    )
    with torch.inference_mode():
        return model.encode_images(torch.from_numpy(pixels))
