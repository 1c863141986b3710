"""The ``models`` table and the current model: scores of different model fingerprints never mix.

The current model (a ``meta`` key) is the library's model: the one rankings read, and the one ``rank`` and ``watch``
score with unless told to switch. The caller passes the fingerprint in, since computing it belongs to the model
layer above; so are the settings that rebuild a model (``{"preset", "checkpoint", …}``, stored in its meta JSON
under ``"settings"``), which are plain text to this layer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pmllm_batch.db import meta
from pmllm_batch.db.plain import model_info, model_meta, model_settings
from pmllm_batch.db.plain import model_label as model_label  # the row-free parts live in db.plain (status reads
from pmllm_batch.db.plain import settings_label as settings_label  # them without SQLAlchemy); callers import them here
from pmllm_batch.db.records import ModelInfo, RecipeModel
from pmllm_batch.db.schema import META_CURRENT_MODEL, ModelRow, utcnow


def ensure(s: Session, fingerprint: str, preset: str, facts: Mapping[str, object], *, make_current: bool) -> int:
    """Register a model fingerprint (once, with ``facts`` as its meta JSON), optionally make it current; its id."""
    row = s.scalar(select(ModelRow).where(ModelRow.fingerprint == fingerprint))
    if row is None:
        row = ModelRow(
            fingerprint=fingerprint,
            preset=preset,
            meta_json=json.dumps(facts, sort_keys=True, default=str),
            created_at=utcnow(),
        )
        s.add(row)
        s.flush()
    if make_current:
        meta.set_value(s, META_CURRENT_MODEL, str(row.id))
    return row.id


MAX_RECIPES = 8  # settings recipes remembered per model (a few checkouts or configs that load the same weights)


def _meta(row: ModelRow) -> dict[str, object]:
    return model_meta(row.meta_json)


def _info(row: ModelRow, meta_data: Mapping[str, object]) -> ModelInfo:
    return model_info(row.id, row.fingerprint, row.preset, meta_data)


def remember_recipe(s: Session, model_id: int, recipe: str, facts: Mapping[str, object]) -> None:
    """Record that settings with this ``recipe`` load model ``model_id`` (and only it), with ``facts`` it needs
    without loading (the vision graph id, whether it is the demo)."""
    for row in s.scalars(select(ModelRow)):
        meta_data = _meta(row)
        listed = meta_data.get("recipes")
        recipes = [r for r in listed if isinstance(r, str)] if isinstance(listed, list) else []
        if row.id == model_id:
            recipes = [recipe, *[r for r in recipes if r != recipe]][:MAX_RECIPES]
            meta_data.update(facts)
        elif recipe in recipes:
            recipes.remove(recipe)  # the same settings now load other weights
        else:
            continue
        meta_data["recipes"] = recipes
        row.meta_json = json.dumps(meta_data, sort_keys=True, default=str)


def by_recipe(s: Session, recipe: str) -> RecipeModel | None:
    """The model these settings load (with its vision graph, when recorded), when it was loaded before."""
    for row in s.scalars(select(ModelRow).order_by(ModelRow.id.desc())):
        meta_data = _meta(row)
        listed = meta_data.get("recipes")
        if isinstance(listed, list) and recipe in listed:
            found = RecipeModel(**_info(row, meta_data))
            vision_id = meta_data.get("vision_id")
            if isinstance(vision_id, str):
                found["vision_id"] = vision_id
            return found
    return None


def remember_settings(s: Session, model_id: int, settings: Mapping[str, str]) -> bool:
    """Store the settings that rebuild model ``model_id`` (the latest that loaded it); True when they changed."""
    row = s.get(ModelRow, model_id)
    if row is None:
        return False
    meta_data = _meta(row)
    wanted = dict(sorted(settings.items()))
    if model_settings(meta_data) == wanted:
        return False
    meta_data["settings"] = wanted
    row.meta_json = json.dumps(meta_data, sort_keys=True, default=str)
    return True


def by_settings(s: Session, settings: Mapping[str, str]) -> ModelInfo | None:
    """The model last rebuilt from exactly these settings (the newest when several were), or None."""
    wanted = dict(settings)
    for row in s.scalars(select(ModelRow).order_by(ModelRow.id.desc())):
        meta_data = _meta(row)
        if model_settings(meta_data) == wanted:
            return _info(row, meta_data)
    return None


def make_current(s: Session, model_id: int) -> None:
    """Make ``model_id`` the model whose scores rankings read."""
    if current_id(s) != model_id:
        meta.set_value(s, META_CURRENT_MODEL, str(model_id))


def current_id(s: Session) -> int | None:
    """The current model's id; None before any model was made current."""
    raw = meta.get_value(s, META_CURRENT_MODEL)
    return int(raw) if raw else None


def describe(s: Session, model_id: int | None) -> ModelInfo | None:
    """{"id", "fingerprint", "preset", "demo", "note", "settings"} of a model, or None when there is no such model."""
    row = s.get(ModelRow, model_id) if model_id is not None else None
    if row is None:
        return None
    return _info(row, _meta(row))


def count(s: Session) -> int:
    """Number of registered model fingerprints."""
    return s.scalar(select(func.count()).select_from(ModelRow)) or 0
