"""Loading the scoring models once, lazily, and unloading them after an idle time (daemon)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pmllm_batch.config import Settings
from pmllm_batch.errors import UntrainedModelError
from pmllm_batch.log import get_logger
from pmllm_batch.model.spec import ModelSpec

if TYPE_CHECKING:  # type-only: importing this module loads neither torch nor the model
    from pmllm_batch.contracts import FeatureEncoder
    from pmllm_batch.model.pmllm import PMLLM

log = get_logger("models")


@dataclass
class LoadedModels:
    model: PMLLM  # the LLM stage (torch): projector, fusion, frozen LLM
    vision: FeatureEncoder  # pixels → tower features (ONNX or torch runner)
    fingerprint: str  # identifies every score this pair produces
    preset: str

    @property
    def demo_note(self) -> str | None:
        """What the scores of this model mean when it is a demo (:func:`pmllm_batch.model.presets.demo_note`)."""
        from pmllm_batch.model.presets import demo_note

        return demo_note(self.model.cfg)


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass


def _vision_runner(model: PMLLM, settings: Settings) -> FeatureEncoder:
    """The vision runner for ``model``: the cached ONNX graph (exported from the torch tower on first use), or the
    torch tower itself. With ONNX the tower is built only when the graph is missing or no longer loads."""
    from pmllm_batch.errors import ModelLoadError
    from pmllm_batch.model.checkpoint import vision_fingerprint
    from pmllm_batch.model.factory import attach_vision_tower
    from pmllm_batch.runtime.onnx_export import is_complete
    from pmllm_batch.runtime.vision_runner import load_vision_runner

    onnx = settings.vision.backend == "onnx"
    # the ONNX export belongs to the vision side (the tower, not the adapter): an int8 LLM, a retrained adapter and
    # another preset with the same tower reuse the graph and the cached features
    vision_fp = vision_fingerprint(model)
    onnx_root = settings.cache_dir() / "onnx"
    if onnx and model.tower is None and not is_complete(onnx_root / vision_fp):
        log.info("no ONNX vision graph cached for %s yet: building the torch vision tower once to export it", vision_fp)
        attach_vision_tower(model, offline=settings.model.offline)

    def runner() -> FeatureEncoder:
        return load_vision_runner(
            model.exportable_tower(),  # None without the tower: then the cached graph must do
            fingerprint=vision_fp,
            backend=settings.vision.backend,
            variant=settings.vision.variant,
            cache_root=onnx_root,
            providers=list(settings.vision.providers),
            intra_op_threads=settings.vision.intra_op_threads,
        )

    try:
        vision = runner()
    except ModelLoadError:
        if not onnx or model.tower is not None:
            raise
        # a cached graph that no longer loads: with the tower, load_vision_runner exports it again
        attach_vision_tower(model, offline=settings.model.offline)
        vision = runner()
    if onnx:
        model.tower = None  # the ONNX graph replaces it; free the memory
    return vision


def load_models(settings: Settings, *, build_tower: bool | None = None) -> LoadedModels:
    """Build the PMLLM and its vision runner from settings (exports the ONNX graph on first use).

    With the ONNX backend the torch vision tower is built only when the ONNX artefact for this model is missing
    (or fails to load): a warm start reads neither open_clip's tower nor its weights. ``build_tower=True`` always
    builds it (the old behaviour, for the bench's before/after figure); the torch backend always needs it.
    """
    from pmllm_batch.model.checkpoint import fingerprint
    from pmllm_batch.model.presets import demo_note

    _quiet_transformers()
    t0 = time.perf_counter()
    spec = ModelSpec.from_settings(settings)
    onnx = settings.vision.backend == "onnx"
    model = spec.create(with_vision=not onnx or bool(build_tower))
    if model.fusion_untrained() and not settings.model.allow_untrained:
        raise UntrainedModelError(
            f"the {model.cfg.name} model's fusion modules were never trained, so every photo would get the same "
            "score; load a trained adapter (--checkpoint DIR or [model] checkpoint, e.g. from `pmllm-batch train`) "
            "or pass --allow-untrained for benchmarks."
        )
    vision = _vision_runner(model, settings)
    fp = fingerprint(model, vision_graph_id=vision.graph_id)
    note = demo_note(model.cfg)
    log.info(
        "loaded %s (fingerprint %s, vision %s%s) in %.1fs on %s%s",
        model.cfg.name, fp, vision.graph_id, ", int8 LLM" if model.cfg.lm.quantize == "int8" else "",
        time.perf_counter() - t0, spec.device, f" — {note}" if note else "",
    )
    return LoadedModels(model, vision, fp, model.cfg.name)


class ModelCache:
    """Lazy load under a lock; ``maybe_unload`` drops the models after ``idle_s`` without use.

    The one idle clock: it starts at the last :meth:`get` or :meth:`touch`. A caller that uses the models for a long
    stretch (the daemon's batch) calls :meth:`touch` when the work ends, so idle means "since the last work ended".

    ``on_load``, when set, is called right before a load starts (the daemon says what it waits for: a load takes
    seconds to minutes, and the load's own line comes only once it is done).
    """

    def __init__(self, settings: Settings, idle_s: float | None = None,
                 loader: Callable[[Settings], LoadedModels] = load_models) -> None:
        self._settings = settings
        self._idle_s = idle_s
        self._loader = loader
        self._lock = threading.Lock()
        self._models: LoadedModels | None = None
        self._last_used = time.monotonic()
        self.on_load: Callable[[], None] | None = None

    @property
    def idle_s(self) -> float | None:
        """Seconds without use after which :meth:`maybe_unload` drops the models (None: never)."""
        return self._idle_s

    def get(self) -> LoadedModels:
        with self._lock:
            if self._models is None:
                if self.on_load is not None:
                    self.on_load()
                self._models = self._loader(self._settings)
            self._last_used = time.monotonic()
            return self._models

    def touch(self) -> None:
        """Work that used the models just ended: the idle time counts from now."""
        self._last_used = time.monotonic()

    @property
    def loaded(self) -> bool:
        return self._models is not None

    @property
    def settings(self) -> Settings:
        """The settings this cache loads from."""
        return self._settings

    def idle_for(self) -> float:
        """Seconds since the models were last used."""
        return time.monotonic() - self._last_used

    def maybe_unload(self) -> bool:
        with self._lock:
            if self._models is None or self._idle_s is None:
                return False
            if self.idle_for() < self._idle_s:
                return False
            self._models = None
            log.info("models unloaded after %.0fs idle", self._idle_s)
            return True
