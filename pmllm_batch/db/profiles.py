"""The ``profiles`` table: each person's profile fields and the persona text it renders to.

A profile's scores are valid for its persona text only, so a changed persona deletes them. Every add,
change or remove bumps the ``profiles_version`` meta counter, which the daemon polls.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from pmllm_batch.db import meta, scores
from pmllm_batch.db.records import ProfileRow
from pmllm_batch.db.schema import META_PROFILES_VERSION, PersonRating, ProfileModel, TasteRow, utcnow
from pmllm_batch.errors import ProfileError
from pmllm_batch.profiles import Profile, did_you_mean


def persona_digest(persona: str) -> str:
    """sha256 of the persona text: scores stay valid exactly as long as this does not change."""
    return hashlib.sha256(persona.encode("utf-8")).hexdigest()


def version(s: Session) -> str:
    """A token that changes whenever any profile is added, changed or removed."""
    return meta.get_value(s, META_PROFILES_VERSION) or "0"


def _source_key(profile_id: int) -> str:
    # The file a profile was added from lives in ``meta`` (keyed by id, which fits its 64-character keys), so a
    # later `profile add` of the same file updates it while another file with the same name is refused.
    return f"profile_source:{profile_id}"


def sources(s: Session) -> dict[str, str | None]:
    """Profile name -> the file it was last added from (absolute path), None when unknown."""
    return {name: meta.get_value(s, _source_key(pid)) for pid, name in s.execute(select(ProfileModel.id,
                                                                                        ProfileModel.name))}


def _bump_version(s: Session) -> None:
    meta.set_value(s, META_PROFILES_VERSION, str(int(version(s)) + 1))


def _to_row(row: ProfileModel) -> ProfileRow:
    data = json.loads(row.fields_json)
    return ProfileRow(
        id=row.id,
        name=row.name,
        profile=Profile.from_dict(data, source=f"stored profile '{row.name}'"),
        persona=row.persona,
        persona_hash=row.persona_hash,
        updated_at=row.updated_at,
    )


def find(s: Session, name: str) -> ProfileModel:
    """The profile row called ``name``.

    Raises:
        ProfileError: No profile has this name (the message lists the known ones).
    """
    row = s.scalar(select(ProfileModel).where(ProfileModel.name == name))
    if row is not None:
        return row
    known = list(s.scalars(select(ProfileModel.name).order_by(ProfileModel.name)))
    if known:
        raise ProfileError(f"unknown profile '{name}'{did_you_mean(name, known)}; known profiles: {', '.join(known)}.")
    raise ProfileError(
        f"unknown profile '{name}'; no profiles are stored yet (add one with `pmllm-batch profile add FILE.toml`)."
    )


def upsert(s: Session, profile: Profile, persona: str, source: str | None = None) -> tuple[int, bool]:
    """Store a profile and its rendered persona; returns (profile id, changed), as ``Store.upsert_profile``.

    ``source`` (the file it came from) is remembered when the profile is new or changed, or had none recorded: a
    second file with the same fields leaves the profile where it came from.
    """
    row_id, changed = _upsert(s, profile, persona)
    if source is not None:
        key = _source_key(row_id)
        known = meta.get_value(s, key)
        if known != source and (changed or known is None):
            meta.set_value(s, key, source)
    return row_id, changed


def _upsert(s: Session, profile: Profile, persona: str) -> tuple[int, bool]:
    fields_json = json.dumps(profile.to_dict(), sort_keys=True, ensure_ascii=False)
    digest = persona_digest(persona)
    now = utcnow()
    row = s.scalar(select(ProfileModel).where(ProfileModel.name == profile.name))
    if row is None:
        row = ProfileModel(
            name=profile.name,
            fields_json=fields_json,
            persona=persona,
            persona_hash=digest,
            created_at=now,
            updated_at=now,
        )
        s.add(row)
        s.flush()
        _bump_version(s)
        return row.id, True
    if row.persona_hash != digest:
        scores.forget_profile(s, row.id)
        row.fields_json, row.persona, row.persona_hash, row.updated_at = fields_json, persona, digest, now
        _bump_version(s)
        return row.id, True
    if row.fields_json != fields_json:
        # Same persona, so the scores still hold; keep the stored fields exact anyway.
        row.fields_json, row.updated_at = fields_json, now
        _bump_version(s)
    return row.id, False


def get(s: Session, name: str) -> ProfileRow:
    """One stored profile (ProfileError when unknown, see :func:`find`)."""
    return _to_row(find(s, name))


def list_all(s: Session) -> list[ProfileRow]:
    """Every stored profile, by name."""
    return [_to_row(r) for r in s.scalars(select(ProfileModel).order_by(ProfileModel.name))]


def remove(s: Session, name: str) -> None:
    """Delete a profile and its scores (ProfileError when unknown)."""
    row = find(s, name)
    # Explicit, so backends without enforced foreign keys lose the scores too.
    scores.forget_profile(s, row.id)
    for table in (PersonRating, TasteRow):  # their ratings and learned tastes
        s.execute(delete(table).where(table.profile_id == row.id))
    meta.delete_value(s, _source_key(row.id))
    s.execute(delete(ProfileModel).where(ProfileModel.id == row.id))
    _bump_version(s)


def count(s: Session) -> int:
    """Number of stored profiles."""
    return s.scalar(select(func.count()).select_from(ProfileModel)) or 0
