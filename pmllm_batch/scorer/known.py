"""Which model a library scorer works with — known from an earlier load (no load needed) or registered now — and
which model a command uses: the library's own, unless told otherwise.

Nothing loads when nothing needs scoring: the settings' *recipe* (:func:`model_recipe`) is remembered with the
model it loaded, so a later run with the same settings knows the model's fingerprint and vision graph without
loading it, and loads it only when a photo needs vision or a pair needs a score.

**One model per library.** The library's model (``Store.current_model``) is stored with the settings that rebuild
it (:func:`model_settings`). :func:`choose_scoring_model` is the rule ``rank`` and ``watch`` follow: without
``--preset``/``--checkpoint`` on the command line they score with the library's model (its stored settings); a
command line that names another model is refused, in one sentence that says what switching would rescore, unless
``--switch-model``. :func:`model_for_outputs` is the rule of ``export``, ``xmp``, ``report`` and ``albums``: the
library's model, or the scores of the model the command line names (found without loading anything).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pmllm_batch.config import Settings
from pmllm_batch.db.models import model_label, settings_label
from pmllm_batch.db.records import ModelInfo
from pmllm_batch.db.store import Store
from pmllm_batch.errors import UserError
from pmllm_batch.log import get_logger
from pmllm_batch.model.presets import is_preset_file
from pmllm_batch.scorer.models import ModelCache
from pmllm_batch.scorer.summary import RunSummary, plural

log = get_logger("models")

__all__ = [
    "KnownModel", "ModelChoice", "ModelRegistry", "choose_scoring_model", "find_model", "model_for_outputs",
    "model_label", "model_recipe", "model_settings", "settings_label", "with_model_settings",
]

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
    facts: dict[str, object] = {"version": __version__, "model": model,
                                "vision": [settings.vision.backend, settings.vision.variant]}
    if settings.score.quantize != "none":  # an int8 LLM is another model (own fingerprint); "none" keeps old recipes
        facts["quantize"] = settings.score.quantize
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
        self._settings_noted: int | None = None  # the model whose rebuild settings this registry stored
        self._made_current: int | None = None  # the library's model as this registry last saw or made it
        self._left_alone = False  # another process switched the library's model meanwhile (said once)

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
                self._remember_settings(model_id)
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

    def _remember_settings(self, model_id: int) -> None:
        """Store the settings that rebuild ``model_id`` with it (once per registry and model)."""
        if self._settings_noted != model_id:
            self.store.remember_model_settings(model_id, model_settings(self.models.settings))
            self._settings_noted = model_id

    def note(self, model: KnownModel, summary: RunSummary) -> None:
        """The run scores with ``model``: say so in the summary and make it the library's current model (the
        commands decide beforehand whether it may be: :func:`choose_scoring_model`).

        Once this registry has seen ``model`` current, a later switch by another process (``rank --switch-model``
        beside a running ``watch``) is left alone: a warning says so, and this process's scores go on being written
        under its own model without taking the library back."""
        summary.model, summary.demo, summary.note = model.fingerprint, model.demo, model.note
        self._remember_settings(model.id)
        current = self.store.current_model_id()
        if current != model.id and current is not None and self._made_current not in (None, current):
            if not self._left_alone:
                self._left_alone = True
                log.warning("another command made a different model the library's model; this process keeps "
                            "scoring with %s and leaves the library's model as it is (restart it to score with the "
                            "library's model)", model.preset or model.fingerprint[:12])
            return
        if current != model.id:
            self.store.make_current(model.id)
        self._made_current = model.id


# ---------------------------------------------------------------------------------------------------------------------
# One model per library: which model a command uses
# ---------------------------------------------------------------------------------------------------------------------

# The settings that rebuild a model, stored with it: [model] preset, checkpoint, lm_path, vision_checkpoint and
# [score] quantize (device, offline and allow_untrained say how to run it, not which model it is).
MODEL_KEYS = ("preset", "checkpoint", "lm_path", "vision_checkpoint")


def _absolute(value: str, *, preset: bool = False) -> str:
    """A local path as an absolute one (so the stored settings work from any folder); anything else unchanged."""
    if not value or value == "none" or "://" in value or value.startswith(("pkg:", "py:")):
        return value
    if preset and not is_preset_file(value):
        return value  # a shipped preset's name, never a file in the current folder
    path = Path(value).expanduser()
    try:
        return str(path.resolve()) if path.exists() else value
    except OSError:
        return value


def model_settings(settings: Settings) -> dict[str, str]:
    """The settings that rebuild the model ``settings`` name, as stored with it: ``{"preset", "checkpoint",
    "lm_path", "vision_checkpoint", "quantize"}``, local paths made absolute."""
    out = {k: _absolute(str(getattr(settings.model, k)), preset=k == "preset") for k in MODEL_KEYS}
    out["quantize"] = str(settings.score.quantize)
    return out


def with_model_settings(settings: Settings, stored: Mapping[str, str]) -> Settings:
    """``settings`` scoring with the model ``stored`` describes (:func:`model_settings`); device, offline and every
    other section stay as they are."""
    model = dataclasses.replace(settings.model, preset=str(stored.get("preset") or settings.model.preset),
                                checkpoint=str(stored.get("checkpoint", "")), lm_path=str(stored.get("lm_path", "")),
                                vision_checkpoint=str(stored.get("vision_checkpoint", "")))
    score = dataclasses.replace(settings.score, quantize=str(stored.get("quantize") or "none"))
    return dataclasses.replace(settings, model=model, score=score)


def find_model(store: Store, settings: Settings) -> ModelInfo | None:
    """The registered model these settings load, found without loading anything: by their recipe (they loaded it
    before), else by the settings stored with a model (the same preset, adapter and weights, e.g. after an upgrade
    changed the recipe); None when the library has never seen it."""
    by_recipe = store.model_for_recipe(model_recipe(settings))
    if by_recipe is not None:
        return store.model(by_recipe["id"])
    return store.model_for_settings(model_settings(settings))


@dataclass(frozen=True)
class ModelChoice:
    """What ``rank`` or ``watch`` scores with (:func:`choose_scoring_model`)."""

    settings: Settings  # the settings to score with (the library's model's, when the command line named none)
    library: ModelInfo | None  # the library's model before the run (None: a new library)
    target: ModelInfo | None  # the model ``settings`` load, when the library knows it
    switch: bool = False  # the run makes another model the library's (``--switch-model``)
    photos: int = 0  # with ``switch``: photos the new model still has to score ...
    profiles: int = 0  # ... for this many profiles
    note: str = ""  # a sentence for the log ("" when there is nothing to say)


def _to_rescore(store: Store, target: ModelInfo | None, profiles: Sequence[str] | None) -> tuple[int, int]:
    """(photos, profiles) that ``target`` (None: a model without scores) lacks a score for."""
    library = set(store.ok_hashes())
    rows = store.list_profiles()
    if profiles:
        rows = [r for r in rows if r.name in set(profiles)]
    photos: set[str] = set()
    people = 0
    for row in rows:
        missing = library - store.scored_hashes(row.id, target["id"]) if target is not None else library
        photos |= missing
        people += bool(missing)
    return len(photos), people


def _rescore_text(name: str, photos: int, profiles: int) -> str:
    """What switching to ``name`` would cost, as a clause."""
    if not photos:
        return f"switching to {name} needs no scoring (its scores of every photo are in the library)"
    return f"scoring with {name} would score {plural(photos, 'photo')} for {plural(profiles, 'profile')} again"


def _keep_library_model(store: Store, settings: Settings, library: ModelInfo, target: ModelInfo | None,
                        wanted: Mapping[str, str]) -> ModelChoice:
    """No model named on the command line: score with the library's model, rebuilt from its stored settings."""
    if library["settings"]:
        rebuilt = with_model_settings(settings, library["settings"])
        note = ""
        if wanted != model_settings(Settings()):  # a config file names another model than the library's
            note = (f"scoring with the library's model {model_label(library)}, not {settings_label(wanted)} "
                    "from the settings; `--preset`/`--checkpoint` with --switch-model make that the library's")
        return ModelChoice(rebuilt, library, library, note=note)
    # Registered before its settings were stored: a shipped preset's own weights are the best guess.
    guess = None
    if library["preset"] and not is_preset_file(library["preset"]):
        guess = dataclasses.replace(settings, model=dataclasses.replace(
            settings.model, preset=library["preset"], checkpoint="", lm_path="", vision_checkpoint=""))
    known = find_model(store, guess) if guess is not None else None
    if guess is not None and (known is None or known["id"] == library["id"]):
        return ModelChoice(guess, library, known)
    if target is None:
        return ModelChoice(settings, library, None)  # unknown either way: the settings may well load it
    raise UserError(
        f"the library's model is {model_label(library)}, whose settings were not recorded, and the settings "
        f"name {settings_label(dict(wanted))}: give its --preset (and --checkpoint) once, or add --switch-model to "
        f"make {settings_label(dict(wanted))} the library's model."
    )


def choose_scoring_model(
    store: Store,
    settings: Settings,
    *,
    explicit: bool,
    switch: bool = False,
    profiles: Sequence[str] | None = None,
) -> ModelChoice:
    """The model ``rank`` or ``watch`` scores with: the library's, never silently another.

    The rule: a library without a model takes the one the settings name. Otherwise, when the command line named no
    model (``explicit`` False: no ``--preset``/``--checkpoint``) and ``switch`` is False, the run scores with the
    library's model, rebuilt from its stored settings (whatever ``[model]`` in a config file says: a note says so
    when they differ). When the command line names a model (or ``switch``) and it is not the library's, the run is
    refused unless ``switch``; with ``switch`` the settings' model becomes the library's (made current now when the
    library knows it, else when it loads).

    Args:
        store: The library.
        settings: The settings, with the command's model options applied.
        explicit: ``--preset`` or ``--checkpoint`` was given on the command line.
        switch: ``--switch-model``.
        profiles: The profiles the run scores (None: every stored one), for the count of what a switch rescores.

    Raises:
        UserError: The command line names another model than the library's, without ``switch``.
    """
    library = store.current_model()
    target = find_model(store, settings)
    if library is None or (target is not None and target["id"] == library["id"]):
        return ModelChoice(settings, library, target)
    wanted = model_settings(settings)
    if not explicit and not switch:
        return _keep_library_model(store, settings, library, target, wanted)
    name = settings_label(wanted)
    photos, people = _to_rescore(store, target, profiles)
    if not switch:
        raise UserError(
            f"the library's model is {model_label(library)}; {_rescore_text(name, photos, people)}: "
            f"add --switch-model to make {name} the library's model (or leave out --preset and --checkpoint to keep "
            f"{library['preset']})."
        )
    if target is not None:
        store.make_current(target["id"])
    note = (f"switching the library's model from {model_label(library)} to {name}: "
            + (f"scoring {plural(photos, 'photo')} for {plural(people, 'profile')} again" if photos
               else "every photo is scored already")
            + f"; the scores of {library['preset']} stay in the library")
    return ModelChoice(settings, library, target, switch=True, photos=photos, profiles=people, note=note)


def model_for_outputs(
    store: Store, settings: Settings, *, explicit: bool, checkpoint_flag: str = ""
) -> ModelInfo | None:
    """Whose scores ``export``, ``xmp``, ``report`` and ``albums`` read: the library's model (None before any
    scoring), or, when the command line names a model (``explicit``), that model's — found without loading.

    Args:
        checkpoint_flag: ``--checkpoint`` as the user gave it, for the hint ("" when not given).

    Raises:
        UserError: The named model has no scores in this library (the sentence says how to score them).
    """
    library = store.current_model()
    if not explicit:
        return library
    found = find_model(store, settings)
    if found is not None and store.photos_scored(found["id"]):
        return found
    wanted = model_settings(settings)
    switch = " --switch-model" if library is not None and (found is None or found["id"] != library["id"]) else ""
    checkpoint = f" --checkpoint {checkpoint_flag}" if checkpoint_flag else ""
    name = settings_label(wanted)
    what = f"the {name} model" if not wanted["checkpoint"] else f"the model {name}"
    raise UserError(f"no scores from {what} in this library; score them with "
                    f"`pmllm-batch --preset {settings.model.preset} rank{checkpoint}{switch} PATH`.")
