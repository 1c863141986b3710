"""Which model a library scorer works with — known from an earlier load (no load needed) or registered now.

Nothing loads when nothing needs scoring: the settings' *recipe* (:func:`model_recipe`) is remembered with the
model it loaded, so a later run with the same settings knows the model's fingerprint and vision graph without
loading it, and loads it only when a photo needs vision or a pair needs a score.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pmllm_batch.config import Settings
from pmllm_batch.db.store import Store
from pmllm_batch.scorer.models import ModelCache
from pmllm_batch.scorer.summary import RunSummary

__all__ = ["KnownModel", "ModelRegistry", "model_recipe"]

@dataclass(frozen=True)
class KnownModel:
    """The model a scorer works with, as the database knows it (possibly without loading it)."""

    id: int
    fingerprint: str
    vision_id: str
    demo: bool
    preset: str = ""
    note: str = ""  # for a demo model, the sentence that says so and names the preset


_PACKAGE = Path(__file__).resolve().parents[1]
_MAX_RECIPE_FILES = 5000


def _local_paths(value: object, base: Path) -> list[Path]:
    """Existing local files or folders named by ``value`` (a settings or preset value), else []."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _local_paths(v, base)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _local_paths(v, base)]
    if not isinstance(value, str) or not value or "://" in value or value == "none":
        return []
    if value.startswith("pkg:"):
        candidate = _PACKAGE / value[4:]
    else:
        candidate = Path(value).expanduser()
        if not candidate.is_absolute():
            candidate = base / candidate
    try:
        return [candidate] if candidate.exists() else []
    except OSError:
        return []


def model_recipe(settings: Settings) -> str:
    """What the model settings load, without loading anything: a digest of the ``[model]`` settings (but device and
    offline), the vision backend and variant, this package's version, and the names, sizes and mtimes of every local
    weight file they name (adapter, preset file, local base weights, the shipped presets and demo assets).

    Two runs with the same recipe load the same model, so a run whose recipe the database knows can tell what
    still needs scoring without loading the model (docs/ARCHITECTURE.md, "Speed levers").
    """
    from pmllm_batch.version import __version__

    model = {k: v for k, v in dataclasses.asdict(settings.model).items() if k not in ("device", "offline")}
    facts = {"version": __version__, "model": model,
             "vision": [settings.vision.backend, settings.vision.variant]}
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode())
    roots = [_PACKAGE / "model" / "model_configs", _PACKAGE / "assets"]
    roots += _local_paths(model, Path.cwd())
    preset = str(settings.model.preset)
    for path in [p for p in roots if p.suffix == ".json" and p.is_file()]:
        try:
            roots += _local_paths(json.loads(path.read_text(encoding="utf-8")), path.parent)
        except (OSError, ValueError):
            pass
    shipped = _PACKAGE / "model" / "model_configs" / f"{preset}.json"
    if shipped.is_file():
        try:
            roots += _local_paths(json.loads(shipped.read_text(encoding="utf-8")), shipped.parent)
        except (OSError, ValueError):
            pass
    seen: set[Path] = set()
    count = 0
    for root in roots:
        files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
        for f in files:
            if f in seen or count >= _MAX_RECIPE_FILES:
                continue
            seen.add(f)
            count += 1
            try:
                st = f.stat()
            except OSError:
                continue
            digest.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


class ModelRegistry:
    """The model these settings score with, as the database knows it: looked up by recipe without loading, or
    registered (fingerprint, vision graph, demo flag) once the models load."""

    def __init__(self, store: Store, models: ModelCache, recipe: str) -> None:
        self.store = store
        self.models = models
        self.recipe = recipe
        self._model: KnownModel | None = None  # known (from the recipe) or registered (after a load)
        self._registered = False  # registered in this process
        self._looked_up = False

    def known(self, *, load: bool = False) -> KnownModel | None:
        """Registered after a load, or known from an earlier one (no load); ``load`` loads the models when they are
        not yet (first use: the fingerprint is only known then)."""
        if load or self.models.loaded:
            loaded = self.models.get()
            if not self._registered or self._model is None or self._model.fingerprint != loaded.fingerprint:
                demo = bool(loaded.model.cfg.demo)
                note = loaded.demo_note or ""
                model_id = self.store.ensure_model(loaded.fingerprint, loaded.preset, {"demo": demo, "note": note})
                vision_id = str(loaded.vision.graph_id)
                self.store.remember_recipe(model_id, self.recipe, {"vision_id": vision_id, "demo": demo, "note": note})
                self._model = KnownModel(model_id, loaded.fingerprint, vision_id, demo, loaded.preset, note)
                self._registered = True
            return self._model
        if self._model is None and not self._looked_up:
            self._looked_up = True
            row = self.store.model_for_recipe(self.recipe)
            if row is not None and "vision_id" in row:
                self._model = KnownModel(row["id"], row["fingerprint"], row["vision_id"], row["demo"], row["preset"],
                                         row["note"])
        return self._model

    def loaded(self) -> KnownModel:
        """Load the models (when not yet) and return the registered model."""
        model = self.known(load=True)
        assert model is not None  # a load always registers
        return model

    def note(self, model: KnownModel, summary: RunSummary) -> None:
        """The run scores with ``model``: say so in the summary and make it the library's current model."""
        summary.model, summary.demo, summary.note = model.fingerprint, model.demo, model.note
        if self.store.current_model_id() != model.id:
            self.store.make_current(model.id)
