"""Plain records handed in and out of the database (no ORM object leaks out of a transaction)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import TypedDict

from pmllm_batch.contracts import JSON, PhotoRecord
from pmllm_batch.profiles import Profile

# The ``photos`` columns a PhotoRecord carries (every one but the bookkeeping times).
PHOTO_RECORD_FIELDS = tuple(f.name for f in fields(PhotoRecord))


@dataclass
class RankedPhoto:
    """One row of a profile's ranking (one per content hash, or per burst group in a grouped view)."""

    rank: int  # 1-based
    path: str
    score: float
    content_hash: str
    taken_at: str | None
    width: int | None
    height: int | None
    mtime_ns: int | None = None  # of ``path``: the file time, for date scopes when ``taken_at`` is unknown
    paths: tuple[str, ...] = ()  # every file of this content (exact duplicates, RAW twins); () = just ``path``
    group_size: int = 1  # photos of its burst / near-duplicate group in this view (1 = no group)
    group: tuple[str, ...] = ()  # the other group members' paths, best first (grouped views only)


@dataclass
class ProfileRow:
    """A stored profile."""

    id: int
    name: str
    profile: Profile
    persona: str
    persona_hash: str
    updated_at: datetime  # naive UTC


class ModelInfo(TypedDict):
    """A registered model, as ``status`` and the outputs name it."""

    id: int
    fingerprint: str
    preset: str  # the preset's name ("demo", "smol", …) or a preset file's
    demo: bool  # the model config's demo flag: its scores show the mechanism, not anyone's real taste
    note: str  # for a demo: the sentence that says so, naming the preset (model.presets.demo_note); else ""
    # the settings that rebuild it ({"preset", "checkpoint", "lm_path", "vision_checkpoint", "quantize"}, local paths
    # absolute; scorer.known.model_settings), as last loaded; {} for a model registered before they were stored
    settings: dict[str, str]


class RecipeModel(ModelInfo, total=False):
    """The model some settings loaded before (``Store.model_for_recipe``), with the facts remembered without loading."""

    vision_id: str  # its vision graph (the feature cache's key); absent when it was never recorded


class FailedPhoto(TypedDict):
    """A photo whose pixels could not be read (``status`` failed)."""

    path: str
    reason: str | None  # a FailReason value
    message: str | None  # one human sentence


class ExifWarning(TypedDict):
    """An ok photo whose EXIF was broken (its pixels decoded): ``photos.exif_warning``."""

    path: str
    warning: str  # one human sentence


class RunningRun(TypedDict):
    """A run another live process has open (for "waiting for …" messages)."""

    id: int
    kind: str
    pid: int | None
    host: str | None


class RunInfo(TypedDict):
    """A run as ``status`` shows it (JSON-able)."""

    id: int
    kind: str
    status: str  # "running", "ok", "interrupted" or "failed"
    pid: int | None
    host: str | None
    started_at: str | None  # ISO 8601, UTC ("…Z")
    finished_at: str | None
    args: JSON
    summary: JSON
