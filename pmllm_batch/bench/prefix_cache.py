"""Section 1: the persona prefix KV cache against recomputing the full prompt for every (image, profile) pair."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pmllm_batch.profiles import Profile

from .inputs import MIN_PERSONA_TOKENS, PersonaTokens, persona_token_counts
from .timing import TimingStats, stats

if TYPE_CHECKING:
    import torch

    from pmllm_batch.model.pmllm import PMLLM, PrefixState, PromptTokens

SCORE_TOLERANCE = 1e-4


@dataclass
class BatchRate(TimingStats):
    """One path at one batch size: its timing, the batch and (image, profile) pairs/s (batch / median)."""

    batch: int
    pairs_per_s: float


@dataclass
class PrefixCacheResult:
    """Section 1's figures (the JSON object ``prefix_cache``)."""

    profiles: list[str]
    tokens: list[PersonaTokens]
    min_persona_tokens: int
    prefix_tokens: int
    suffix_tokens: int
    # what the speedup is bounded by when both paths run at the same FLOP rate
    token_ratio: float
    # the same bound for a persona of exactly MIN_PERSONA_TOKENS (template tokens around it unchanged)
    token_ratio_at_min_persona: float
    prefix_encode: TimingStats
    per_batch: dict[str, BatchRate]  # "cached@B" / "full@B"
    cached_batch: int
    full_batch: int
    prefix_cache_pairs_per_s: float
    full_prompt_pairs_per_s: float
    prefix_cache_speedup: float  # prefix_cache_pairs_per_s / full_prompt_pairs_per_s
    same_batch: int | None
    prefix_cache_speedup_same_batch: float | None
    library_images_per_profile: int
    prefix_cache_speedup_incl_prefix: float
    breakeven_images_per_profile: float
    prefix_kv_bytes_per_profile: int
    max_abs_score_diff: float | None
    scores_agree: bool


@dataclass
class _Timed:
    """What the interleaved rounds left: seconds per arm, the scores of each (path, batch, profile), prefix size."""

    times: dict[str, list[float]]
    scores: dict[tuple[str, int, int], torch.Tensor]
    prefix_bytes: int


def measure_prefix_cache(
    model: PMLLM,
    visual: torch.Tensor,
    profiles: Sequence[Profile],
    *,
    cached_batches: Sequence[int] = (8, 32),
    full_batches: Sequence[int] = (4, 8),
    repeats_cached: int = 5,
    repeats_full: int = 3,
    library_images: int = 1000,
) -> PrefixCacheResult:
    """Persona prefix KV cache against recomputing the full prompt, on the same real-photo visual tokens.

    Per round (one profile per round, profiles in turn): encode the prefix, score batches from the cached prefix,
    score batches with full prompts. Each path runs at a few batch sizes because they like different ones: a
    cached batch of B photos multiplies only B x suffix rows per GEMM (8 x 32 = 256 here), a full-prompt batch
    B x (prefix + suffix) rows, so the cached path needs a larger batch to reach the same GEMM efficiency, and
    the full path stops gaining (or loses to the caches) much earlier. The headline compares each path at its
    best measured batch; the same-batch figure is reported next to it.

    The speedup is the steady state, what every further pair costs once a profile's prefix exists (the scorer
    encodes it once per profile per run); the one-time prefix cost is reported too, with the speedup it leaves
    for a library of ``library_images`` photos and the break-even.

    Args:
        model: a PMLLM.
        visual: (B, N, D_lm) visual tokens of B >= max(batches) real photos.
        profiles: personas to alternate between (>= MIN_PERSONA_TOKENS tokens each).
        cached_batches: batch sizes timed on the cached path.
        full_batches: batch sizes timed on the full-prompt path (the slow arm).
        repeats_cached: timed cached-path calls per batch size (and prefix encodes).
        repeats_full: timed full-prompt calls per batch size.
        library_images: photos per profile for the amortised figure.
    """
    if visual.shape[0] < max(*cached_batches, *full_batches):
        raise ValueError(f"need visual tokens for {max(*cached_batches, *full_batches)} photos, got {visual.shape[0]}")
    timed = _time_rounds(model, visual, profiles, cached_batches, full_batches, repeats_cached, repeats_full)
    per_batch = {
        name: BatchRate(*stats(ts).parts(), batch=_batch(name), pairs_per_s=_batch(name) / statistics.median(ts))
        for name, ts in timed.times.items()
        if name != "prefix"
    }
    return _summarise(
        per_batch,
        sorted(set(cached_batches) & set(full_batches)),
        timed,
        persona_token_counts(model, profiles),
        [p.name for p in profiles],
        library_images,
    )


def _batch(arm: str) -> int:
    """The batch size in an arm's name (``cached@8`` -> 8)."""
    return int(arm.split("@")[1])


def _time_rounds(
    model: PMLLM,
    visual: torch.Tensor,
    profiles: Sequence[Profile],
    cached_batches: Sequence[int],
    full_batches: Sequence[int],
    repeats_cached: int,
    repeats_full: int,
) -> _Timed:
    """The interleaved rounds: per round one profile, its prefix encoded, then every cached and full batch."""
    import torch

    from pmllm_batch.model.prompts import render_persona

    personas = [render_persona(p) for p in profiles]
    prompts: list[PromptTokens] = [model.prompt(p) for p in personas]
    rounds = _Rounds(model, personas, prompts, visual)
    arms: dict[str, tuple[Callable[[], None], int]] = {"prefix": (rounds.encode_prefix, repeats_cached)}
    for b in cached_batches:
        arms[f"cached@{b}"] = (functools.partial(rounds.cached, b), repeats_cached)
    for b in full_batches:
        arms[f"full@{b}"] = (functools.partial(rounds.full, b), repeats_full)
    times: dict[str, list[float]] = {k: [] for k in arms}
    with torch.inference_mode():
        # warm-up at batch 1 keeps the slow arm's warm-up cheap; it still initialises every kernel path
        one = visual[:1]
        model.score_cached(model.encode_prefix(personas[0]), one)
        model.score_full(prompts[0], one)
        for r in range(max(repeats_cached, repeats_full)):
            rounds.round = r
            for name, (fn, count) in arms.items():
                if r >= count:
                    continue
                if rounds.prefix is None:
                    rounds.encode_prefix()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        prefix_bytes = int(rounds.prefix.nbytes) if rounds.prefix is not None else 0
    return _Timed(times, rounds.scores, prefix_bytes)


class _Rounds:
    """The arms of :func:`_time_rounds`, sharing the round (which profile) and the prefix encoded last."""

    def __init__(self, model: PMLLM, personas: list[str], prompts: list[PromptTokens], visual: torch.Tensor) -> None:
        self.model, self.personas, self.prompts, self.visual = model, personas, prompts, visual
        self.round = 0
        self.prefix: PrefixState | None = None
        self.scores: dict[tuple[str, int, int], torch.Tensor] = {}  # (path, batch, profile) -> (B,)

    def encode_prefix(self) -> None:
        self.prefix = self.model.encode_prefix(self.personas[self.round % len(self.personas)])

    def cached(self, b: int) -> None:
        assert self.prefix is not None
        i = self.round % len(self.personas)
        self.scores[("cached", b, i)] = self.model.score_cached(self.prefix, self.visual[:b]).scores

    def full(self, b: int) -> None:
        i = self.round % len(self.personas)
        self.scores[("full", b, i)] = self.model.score_full(self.prompts[i], self.visual[:b]).scores


def _score_diffs(scores: dict[tuple[str, int, int], torch.Tensor]) -> list[float]:
    """Every cached score against every full score of the same profile, on the photos both scored."""
    diffs = []
    for (path, bc, i), sc in scores.items():
        if path != "cached":
            continue
        for (path2, bf, j), sf in scores.items():
            if path2 == "full" and j == i:
                n = min(bc, bf)
                diffs.append(float((sc[:n] - sf[:n]).abs().max()))
    return diffs


def _summarise(
    per_batch: dict[str, BatchRate],
    common: list[int],
    timed: _Timed,
    tokens: list[PersonaTokens],
    profiles: list[str],
    library_images: int,
) -> PrefixCacheResult:
    """The section's figures from the rates per batch: best batches, speedups, the prefix's cost, score agreement."""
    best_c = max((v for k, v in per_batch.items() if k.startswith("cached")), key=lambda v: v.pairs_per_s)
    best_f = max((v for k, v in per_batch.items() if k.startswith("full")), key=lambda v: v.pairs_per_s)
    same = (
        per_batch[f"cached@{common[-1]}"].pairs_per_s / per_batch[f"full@{common[-1]}"].pairs_per_s if common else None
    )
    t_prefix = statistics.median(timed.times["prefix"])
    per_pair_c, per_pair_f = 1.0 / best_c.pairs_per_s, 1.0 / best_f.pairs_per_s
    diffs = _score_diffs(timed.scores)
    return PrefixCacheResult(
        profiles=profiles,
        tokens=tokens,
        min_persona_tokens=min(t.persona_tokens for t in tokens),
        prefix_tokens=tokens[0].prefix_tokens,
        suffix_tokens=tokens[0].suffix_tokens,
        token_ratio=statistics.mean((t.prefix_tokens + t.suffix_tokens) / t.suffix_tokens for t in tokens),
        token_ratio_at_min_persona=statistics.mean(
            (MIN_PERSONA_TOKENS + t.prefix_tokens - t.persona_tokens + t.suffix_tokens) / t.suffix_tokens
            for t in tokens
        ),
        prefix_encode=stats(timed.times["prefix"]),
        per_batch=per_batch,
        cached_batch=best_c.batch,
        full_batch=best_f.batch,
        prefix_cache_pairs_per_s=best_c.pairs_per_s,
        full_prompt_pairs_per_s=best_f.pairs_per_s,
        prefix_cache_speedup=best_c.pairs_per_s / best_f.pairs_per_s,
        same_batch=common[-1] if common else None,
        prefix_cache_speedup_same_batch=same,
        library_images_per_profile=library_images,
        prefix_cache_speedup_incl_prefix=(library_images * per_pair_f) / (t_prefix + library_images * per_pair_c),
        breakeven_images_per_profile=t_prefix / max(per_pair_f - per_pair_c, 1e-12),
        prefix_kv_bytes_per_profile=timed.prefix_bytes,
        max_abs_score_diff=max(diffs) if diffs else None,
        scores_agree=bool(diffs) and max(diffs) <= SCORE_TOLERANCE,
    )
