"""Rankings as tables: CSV and JSON text (``pmllm-batch export``)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

from pmllm_batch.config import LearnSettings
from pmllm_batch.db import RankedPhoto, Store
from pmllm_batch.outputs.bursts import RankingView
from pmllm_batch.outputs.personal import Learned
from pmllm_batch.outputs.scope import Scope

# paths: every file of the photo (exact duplicates, a RAW twin), ``path`` first; group_size: photos in its burst /
# near-duplicate group (1: none); group: the other members' paths. CSV joins the lists with LIST_SEPARATOR.
EXPORT_FIELDS = ("rank", "path", "score", "content_hash", "taken_at", "paths", "group_size", "group")
FORMATS = ("csv", "json")
LIST_SEPARATOR = ";"


@dataclass
class TabularExport:
    """One profile's ranking, rendered."""

    profile: str
    fmt: str  # "csv" | "json"
    rows: int  # ranking rows in ``text``
    text: str
    learned: Learned | None = None  # what the ranking learned from (``describe()``: "learned from 3 of your ratings")


def render_ranking(ranking: Sequence[RankedPhoto], fmt: str) -> str:
    """Ranking as text.

    Args:
        ranking: From :meth:`Store.ranking`.
        fmt: "json" (a list of objects with :data:`EXPORT_FIELDS`) or "csv" (header row, then one row each;
            an unknown capture time is an empty cell).

    Returns:
        The text, ending with a newline. Scores are written with full float precision, so they read back equal.
    """
    rows = [{name: getattr(item, name) for name in EXPORT_FIELDS} for item in ranking]
    for row, item in zip(rows, ranking, strict=True):
        row["paths"] = list(item.paths or (item.path,))
        row["group"] = list(item.group)
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        for row in rows:
            row["paths"] = LIST_SEPARATOR.join(row["paths"])
            row["group"] = LIST_SEPARATOR.join(row["group"])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")


def export_ranking(
    store: Store,
    profile: str,
    fmt: str,
    *,
    top: int | None = None,
    group: bool = True,
    scope: Scope | None = None,
    model_id: int | None = None,
    learn: LearnSettings | None = None,
    zero_shot: bool = False,
) -> TabularExport:
    """One profile's ranking (the library's model, or ``model_id``'s) as CSV or JSON text.

    Args:
        store: Library database.
        profile: Stored profile name.
        fmt: One of :data:`FORMATS`.
        top: Only the ``top`` best photos; None for all.
        group: Each burst / near-duplicate group once (its best photo for this person, with its size).
        scope: Only photos in these folders and capture dates; ranks are 1..n inside it.
        model_id: Whose scores (default: the library's model).
        learn: ``[learn]`` settings: the ranking learns from the person's own stars (default settings when None).
        zero_shot: The profile-only ranking (``--zero-shot``).

    Raises:
        ProfileError: Unknown profile.
    """
    view = RankingView(store, group=group, scope=scope, learn=learn, zero_shot=zero_shot)
    ranking = view.ranking(profile, top=top, model_id=model_id)
    return TabularExport(profile=profile, fmt=fmt, rows=len(ranking), text=render_ranking(ranking, fmt),
                         learned=view.learned(profile, model_id=model_id))
