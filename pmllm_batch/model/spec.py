"""One place that turns settings into a model: every command (rank, watch, train, eval, export-onnx, bench) builds
its P-MLLM through :class:`ModelSpec`, so ``[model] lm_path``, ``vision_checkpoint``, ``checkpoint`` and
``[score] quantize`` mean the same thing everywhere — including the keys the missing-weights error names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pmllm_batch.config import Settings

if TYPE_CHECKING:
    from pmllm_batch.model.pmllm import PMLLM

__all__ = ["ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """What to build: preset, adapter and local weight overrides, device and caches.

    ``checkpoint``: an adapter folder, ``"none"`` for an untrained adapter, or None for the preset's default.
    """

    preset: str | None
    checkpoint: str | None
    offline: bool
    device: str
    lm_cache_dir: str
    vision_checkpoint: str = ""
    lm_path: str = ""
    quantize: str = "none"
    allow_untrained: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, *, checkpoint: str | None = None, device: str | None = None,
                      preset: str | None = "") -> ModelSpec:
        """The model the settings name. ``checkpoint``/``device``/``preset`` override the settings' values
        (a command's ``--checkpoint``, export's CPU; ``preset=None`` takes the preset from the adapter's config)."""
        m = settings.model
        return cls(
            preset=m.preset if preset == "" else preset,
            checkpoint=checkpoint if checkpoint is not None else (m.checkpoint or None),
            offline=bool(m.offline),
            device=device or settings.resolved_device(),
            lm_cache_dir=str(settings.cache_dir()),
            vision_checkpoint=m.vision_checkpoint,
            lm_path=m.lm_path,
            quantize=settings.score.quantize,
            allow_untrained=bool(m.allow_untrained),
        )

    def with_checkpoint(self, checkpoint: str | None) -> ModelSpec:
        return replace(self, checkpoint=checkpoint)

    def with_quantize(self, quantize: str) -> ModelSpec:
        """The same model with the LLM quantised ``quantize`` (``"none"``: float, e.g. for training)."""
        return replace(self, quantize=quantize)

    def overrides(self) -> dict[str, dict[str, str]]:
        """The architecture-config overrides these settings imply (local weights, int8 LLM)."""
        out: dict[str, dict[str, str]] = {}
        if self.vision_checkpoint:
            out["vision"] = {"checkpoint": str(Path(self.vision_checkpoint).expanduser())}
        if self.lm_path:
            out["lm"] = {"name_or_path": str(Path(self.lm_path).expanduser())}
        if self.quantize != "none":
            out.setdefault("lm", {})["quantize"] = self.quantize
        return out

    def create(self, *, with_vision: bool = True) -> PMLLM:
        """Build the model (see :func:`pmllm_batch.model.factory.create_model`)."""
        from pmllm_batch.model.factory import create_model

        return create_model(
            self.preset,
            self.checkpoint,
            offline=self.offline,
            device=self.device,
            with_vision=with_vision,
            lm_cache_dir=self.lm_cache_dir,
            overrides=dict(self.overrides()) or None,
        )
