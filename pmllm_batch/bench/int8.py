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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pmllm_batch.profiles import Profile

from .timing import TimingStats, interleaved, stats

if TYPE_CHECKING:
    import torch

    from pmllm_batch.model.pmllm import PMLLM, PrefixState

SPEARMAN_TARGET = 0.99
MAX_ABS_TARGET = 0.05


@dataclass
class ProfileParity:
    """One profile's scores under an arm against float32: Spearman over the photos, max abs difference."""

    spearman: float
    max_abs_diff: float


@dataclass
class Int8Arm(TimingStats):
    """One arm (fp32, int8, torch_dynamic, quanto_w8): its timing, rate, speedup and parity with float32."""

    pairs_per_s: float
    speedup_vs_fp32: float  # fp32's median seconds / this arm's
    per_profile: list[ProfileParity]
    spearman_min: float
    max_abs_diff: float


@dataclass
class Int8Result:
    """Section 6's figures (the JSON object ``llm_int8``)."""

    images: int
    profiles: list[str]
    suffix_tokens: int
    arms: dict[str, Int8Arm]
    skipped: dict[str, str]  # arm -> why it did not run
    score_range_fp32: list[float]
    llm_int8_speedup: float  # arms["int8"].speedup_vs_fp32
    llm_int8_score_spearman: float  # arms["int8"].spearman_min
    llm_int8_score_max_abs_diff: float  # arms["int8"].max_abs_diff
    parity: bool  # within SPEARMAN_TARGET and MAX_ABS_TARGET


def _ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 0 … n-1, ties sharing their mean rank."""
    arr = np.asarray(x, dtype=np.float64)
    order = arr.argsort(kind="stable")
    r = np.empty(len(arr))
    r[order] = np.arange(len(arr), dtype=np.float64)
    for v in np.unique(arr):
        idx = arr == v
        r[idx] = r[idx].mean()
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 1.0 for two constant sequences."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return 1.0 if den == 0 else float((ra * rb).sum() / den)


def _decoder_inner_layers(model: PMLLM) -> list[torch.nn.Module]:
    from pmllm_batch.model.fused_lm import FusedDecoderLayer, decoder_layers

    layers = decoder_layers(model.fused.lm, model.cfg.lm.decoder_layers_path)
    return [layer.layer if isinstance(layer, FusedDecoderLayer) else layer for layer in layers]


def _copy_without_tower(model: PMLLM) -> PMLLM:
    """A deep copy of ``model`` without its vision tower (not part of the LLM stage, so not copied)."""
    tower, model.tower = model.tower, None
    try:
        return copy.deepcopy(model)
    finally:
        model.tower = tower


def quantize_in_place(model: PMLLM) -> PMLLM:
    """``model`` with the shipped int8 LLM (what ``create_model`` does for ``lm.quantize = "int8"``)."""
    from pmllm_batch.model.quantize import quantize_lm_int8

    quantize_lm_int8(model.fused.lm, model.cfg.lm.decoder_layers_path)
    model.cfg.lm.quantize = "int8"
    return model.eval()


def int8_copy(model: PMLLM) -> PMLLM:
    """A deep copy of ``model`` with the shipped int8 LLM."""
    return quantize_in_place(_copy_without_tower(model))


def _torch_dynamic_copy(model: PMLLM) -> PMLLM:
    import torch
    from torch.ao.quantization import quantize_dynamic

    q = _copy_without_tower(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        for layer in _decoder_inner_layers(q):
            quantize_dynamic(layer, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return q.eval()


def _quanto_copy(model: PMLLM) -> PMLLM | None:
    try:
        from optimum.quanto import freeze, qint8, quantize
    except ImportError:
        return None
    q = _copy_without_tower(model)
    for layer in _decoder_inner_layers(q):
        quantize(layer, weights=qint8)
        freeze(layer)
    return q.eval()


def measure_llm_int8(
    model: PMLLM,
    visual: torch.Tensor,
    profiles: Sequence[Profile],
    *,
    repeats: int = 3,
    compare: bool = False,
) -> Int8Result:
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

    arms_models, skipped = _arm_models(model, compare)
    scores: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        prefixes = {k: [m.encode_prefix(p) for p in profiles] for k, m in arms_models.items()}

        def arm(name: str) -> Callable[[], None]:
            def call() -> None:
                m = arms_models[name]
                scores[name] = [m.score_cached(p, visual).scores.clone() for p in prefixes[name]]

            return call

        times = interleaved({k: arm(k) for k in arms_models}, repeats)
    pairs = len(profiles) * int(visual.shape[0])
    arms = {name: _arm(times[name], times["fp32"], pairs, scores["fp32"], scores[name]) for name in arms_models}
    shipped = arms["int8"]
    return Int8Result(
        images=int(visual.shape[0]),
        profiles=[p.name for p in profiles],
        suffix_tokens=_suffix_tokens(prefixes["fp32"][0]),
        arms=arms,
        skipped=skipped,
        score_range_fp32=[float(s.max() - s.min()) for s in scores["fp32"]],
        llm_int8_speedup=shipped.speedup_vs_fp32,
        llm_int8_score_spearman=shipped.spearman_min,
        llm_int8_score_max_abs_diff=shipped.max_abs_diff,
        parity=shipped.spearman_min >= SPEARMAN_TARGET and shipped.max_abs_diff <= MAX_ABS_TARGET,
    )


def _arm_models(model: PMLLM, compare: bool) -> tuple[dict[str, PMLLM], dict[str, str]]:
    """The model of each arm (float32 first), and the arms that could not run with the reason."""
    arms_models = {"fp32": model, "int8": int8_copy(model)}
    skipped: dict[str, str] = {}
    if compare:
        arms_models["torch_dynamic"] = _torch_dynamic_copy(model)
        quanto = _quanto_copy(model)
        if quanto is None:
            skipped["quanto_w8"] = "optimum-quanto is not installed (pip install optimum-quanto)"
        else:
            arms_models["quanto_w8"] = quanto
    return arms_models, skipped


def _suffix_tokens(prefix: PrefixState) -> int:
    return len(prefix.prompt.suffix_ids)


def _arm(
    times: list[float], fp32_times: list[float], pairs: int, ref: list[torch.Tensor], got: list[torch.Tensor]
) -> Int8Arm:
    """An arm's figures: ``pairs`` scored per timed call, parity per profile against the float32 scores ``ref``."""
    per = [
        ProfileParity(spearman=spearman(r.tolist(), s.tolist()), max_abs_diff=float((r - s).abs().max()))
        for r, s in zip(ref, got, strict=True)
    ]
    med = statistics.median(times)
    return Int8Arm(
        *stats(times).parts(),
        pairs_per_s=pairs / med,
        speedup_vs_fp32=statistics.median(fp32_times) / med,
        per_profile=per,
        spearman_min=min(p.spearman for p in per),
        max_abs_diff=max(p.max_abs_diff for p in per),
    )


def distinct_images_visual(model: PMLLM, n: int, seed: int = 0) -> torch.Tensor:
    """Visual tokens of ``n`` distinct synthetic renders (the demo/smol training distribution) at the model's size.

    Parity is measured on these rather than on the bench's photo variants: variants of one photo score almost
    alike, so their order among themselves is noise, which a rank correlation would count as disagreement.
    """
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
