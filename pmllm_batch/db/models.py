"""The ``models`` table and the current model: scores of different model fingerprints never mix.

The current model (a ``meta`` key) is the one rankings read; the caller passes the fingerprint in, since
computing it belongs to the model layer above.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pmllm_batch.db import meta
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
    try:
        data = json.loads(row.meta_json or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _info(row: ModelRow, meta_data: Mapping[str, object]) -> ModelInfo:
    # The demo flag as the scorer recorded it ({"demo": …} in the model's facts); rows from before it was recorded
    # only had the preset to tell, and the one demo preset then was "demo".
    flag = meta_data.get("demo")
    demo = flag if isinstance(flag, bool) else row.preset == "demo"
    note = meta_data.get("note")
    return {"id": row.id, "fingerprint": row.fingerprint, "preset": row.preset, "demo": demo,
            "note": note if isinstance(note, str) else ""}


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


def make_current(s: Session, model_id: int) -> None:
    """Make ``model_id`` the model whose scores rankings read."""
    if current_id(s) != model_id:
        meta.set_value(s, META_CURRENT_MODEL, str(model_id))


def current_id(s: Session) -> int | None:
    """The current model's id; None before any model was made current."""
    raw = meta.get_value(s, META_CURRENT_MODEL)
    return int(raw) if raw else None


def describe(s: Session, model_id: int | None) -> ModelInfo | None:
    """{"id", "fingerprint", "preset", "demo"} of a model, or None when there is no such model."""
    row = s.get(ModelRow, model_id) if model_id is not None else None
    if row is None:
        return None
    return _info(row, _meta(row))


def count(s: Session) -> int:
    """Number of registered model fingerprints."""
    return s.scalar(select(func.count()).select_from(ModelRow)) or 0
