"""Test doubles shared by every test that needs a fake model (and a fake clock).

:func:`fake_loader` builds a :class:`~pmllm_batch.scorer.LoadedModels` with the real interface and no weights: a
photo's visual tokens are its mean colour, its score their mean. It costs no model load, so the daemon and the
pipeline can run in-process (``ModelCache(settings, loader=fake_loader)``, or :func:`use_fake_models` for code that
builds its own caches) and in ``python -c`` subprocesses (:func:`main_with_fake_models`).

Knobs (module state, so a test can monkeypatch it and subprocesses see the defaults):

* :data:`LOADS`: one entry per model load in this process;
* :data:`TOKEN_SHAPE`: visual tokens per photo, ``(tokens, width)``;
* :data:`SCORE_HOOK`: called at the start of every language-model chunk (to block, raise, count ...).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pmllm_batch.config import Settings
from pmllm_batch.preprocess_cfg import PreprocessCfg

if TYPE_CHECKING:
    import torch

    from pmllm_batch.scorer import LoadedModels, ModelCache

LOADS: list[int] = []  # one entry per model load in this process
TOKEN_SHAPE = (3, 1)  # visual tokens per photo: (tokens, width); the full-disk test makes them bigger
SCORE_HOOK: list[Callable[[], None]] = []  # called at the start of every LM chunk (block, raise, count ...)


class FakeClock:
    """A monotonic clock that only moves when told (``clock.advance(seconds)``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeVision:
    """The vision runner: tokens = the photo's mean colour, repeated to :data:`TOKEN_SHAPE`."""

    graph_id = "fake-vision"
    preprocess = PreprocessCfg(image_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        colour = pixels.reshape(len(pixels), 3, -1).mean(-1)  # (B, 3)
        n, width = TOKEN_SHAPE
        reps = -(-n * width // 3)
        flat = np.repeat(colour, reps, axis=1)[:, : n * width]
        return flat.reshape(len(pixels), n, width).astype(np.float32)


@dataclass(frozen=True)
class FakeLM:
    name_or_path: str = "pkg:fake"  # a shipped (tiny) LLM, as the demo's: what demo_note reads


@dataclass(frozen=True)
class FakeCfg:
    demo: bool
    name: str = "fake"
    lm: FakeLM = FakeLM()


@dataclass(frozen=True)
class FakeScores:
    scores: torch.Tensor
    probs: torch.Tensor


class FakeModel:
    """The language-model stage: no prefix, identity projection, score = mean of the visual tokens."""

    def __init__(self, demo: bool = False) -> None:
        self.cfg = FakeCfg(demo)

    def encode_prefix(self, profile: object) -> None:
        return None

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def score_cached(self, prefix: object, visual: torch.Tensor) -> FakeScores:
        import torch

        for hook in list(SCORE_HOOK):
            hook()
        scores = visual.float().mean(dim=(1, 2))
        return FakeScores(scores, torch.full((len(scores), 5), 0.2))


def fake_loader(settings: Settings, *, demo: bool = False) -> LoadedModels:
    """A :class:`LoadedModels` with the real interface and no weights (``demo``: it says it is the demo model)."""
    from pmllm_batch.scorer import LoadedModels

    LOADS.append(1)
    return LoadedModels(FakeModel(demo), FakeVision(), "fake-fingerprint", "fake")


demo_fake_loader = functools.partial(fake_loader, demo=True)


def fake_cache(settings: Settings, idle_s: float | None = None, loader: object = None) -> ModelCache:
    """A drop-in for ``ModelCache(settings, idle_s=...)`` that loads with :func:`fake_loader`."""
    from pmllm_batch.scorer import ModelCache

    return ModelCache(settings, idle_s=idle_s, loader=fake_loader)


def use_fake_models(patch: Callable[[Any, str, Any], None]) -> None:
    """Make the scorer and the daemon build their model caches with :func:`fake_loader`.

    Args:
        patch: ``setattr`` (a subprocess), or ``monkeypatch.setattr`` (undone after the test).
    """
    import pmllm_batch.daemon.service as service
    import pmllm_batch.scorer.batch as batch

    patch(batch, "ModelCache", fake_cache)
    patch(service, "ModelCache", fake_cache)


def main_with_fake_models(argv: list[str]) -> int:
    """``pmllm-batch ARGV`` with the stand-in model, for subprocesses (``python -c``)."""
    from pmllm_batch.cli import main

    use_fake_models(setattr)
    return main(argv)
