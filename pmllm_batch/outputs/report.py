"""The gallery report: a static, offline HTML folder of every person's best photos (``pmllm-batch report``).

``DIR/index.html`` shows the family view (one column per person, side by side), then the files that failed with their
reasons; ``DIR/person-<name>.html`` lists one person's photos with score, stars and capture date. Thumbnails are made
by the tool (EXIF-oriented, metadata stripped) into ``DIR/thumbs/``; nothing is read from or linked into the photo
folders at view time, every link is relative and stays inside ``DIR``, and the pages use no CDN, script or web font,
so the folder opens offline and can be copied anywhere.

Safety: ``DIR`` must lie outside every scanned photo folder; a ``DIR`` that holds files but no manifest of ours
(``.pmllm-report.json``) is refused; a re-run replaces only files the manifest lists.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pmllm_batch.config import LearnSettings
from pmllm_batch.db import Store
from pmllm_batch.db.records import FailedPhoto, ProfileRow
from pmllm_batch.errors import UserError
from pmllm_batch.log import get_logger
from pmllm_batch.outputs.albums import check_outside_roots
from pmllm_batch.outputs.bursts import RankingView
from pmllm_batch.outputs.files import read_manifest_files, replace_file_bytes
from pmllm_batch.outputs.personal import PROFILE_ONLY
from pmllm_batch.outputs.scope import Scope, in_scope, resolve_scopes
from pmllm_batch.outputs.stars import DEFAULT_SHARES, star_label
from pmllm_batch.scan import DecodeError, decode_photo
from pmllm_batch.version import __version__

if TYPE_CHECKING:
    import jinja2

log = get_logger("outputs.report")

MANIFEST = ".pmllm-report.json"
MANIFEST_VERSION = 1
THUMBS = "thumbs"
INDEX = "index.html"
DEFAULT_TOP = 24
DEFAULT_THUMB_SIZE = 320
# What the shipped demo presets are, for the disclaimer (the outputs never load a model config to find out).
_DEMO_MODELS = {
    "demo": "a tiny model",
    "smol": "a real LLM (SmolLM2-135M-Instruct) with an adapter",
}


def demo_disclaimer(preset: str) -> str:
    """The note on a report scored by a demo model registered before its own note was stored, naming its preset
    (newer models store the model layer's :func:`pmllm_batch.model.presets.demo_note` with their row)."""
    what = _DEMO_MODELS.get(preset, "a model")
    return f"{preset}: {what} trained on a synthetic task — scores show the mechanism, not anyone's real taste."


# ---------------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ReportPhoto:
    """One photo as a person's page shows it."""

    rank: int  # 1-based, within what the report shows of this person's ranking (its scope)
    path: str
    name: str  # file name
    score: float
    stars: int
    taken_at: str  # "2021-05-01 12:00", or "" when unknown
    thumb: str | None  # path relative to DIR; None when no thumbnail could be made
    problem: str | None = None  # why there is no thumbnail
    also: tuple[str, ...] = ()  # file names of the same photo elsewhere: a RAW twin, exact copies
    group_size: int = 1  # photos of its burst / near-duplicate group (this is the person's best of them)
    yours: bool = False  # ``stars`` are the person's own rating (not ours from the rank)
    content_hash: str = ""

    @property
    def star_text(self) -> str:
        shown = min(max(self.stars, 0), 5)
        return "★" * shown + "☆" * (5 - shown)

    @property
    def star_label(self) -> str:
        label = star_label(self.stars) if self.stars > 0 else "rejected"
        return f"{label}, your rating" if self.yours else label


@dataclass
class ReportPerson:
    """One person's column and page."""

    name: str
    page: str  # file name inside DIR
    persona: str
    ranked: int  # photos in their ranking (in scope)
    photos: list[ReportPhoto] = field(default_factory=list)  # the top ones shown
    learned: str = PROFILE_ONLY  # what the ranking learned from: "learned from 3 of your ratings" / "profile only"
    learned_from: int = 0  # the person's ratings it follows (0: profile only)


@dataclass
class ReportProblem:
    """A photo shown without a thumbnail."""

    path: str
    reason: str  # a FailReason value ("vanished", "truncated", ...)
    message: str


@dataclass
class ReportSummary:
    """What :func:`build_report` wrote."""

    out: Path
    index: Path
    people: list[ReportPerson]
    demo: bool  # the current model's stored demo flag
    model: str | None  # its fingerprint
    preset: str | None = None  # its preset
    note: str = ""  # a demo model's own sentence naming its preset (stored when it was registered)
    thumbnails_made: int = 0
    thumbnails_reused: int = 0
    problems: list[ReportProblem] = field(default_factory=list)  # photos without a thumbnail
    failures: list[FailedPhoto] = field(default_factory=list)  # failed files of the library (in scope)
    removed: int = 0  # stale files of a previous report deleted


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def _display_date(taken_at: str | None) -> str:
    if not taken_at:
        return ""
    return taken_at.replace("T", " ")[:16]


def page_names(names: Sequence[str]) -> dict[str, str]:
    """Profile name -> a safe, unique page file name, e.g. ``"Ana M." -> "person-Ana_M..html"``."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        stem = "person-" + (re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "profile")
        candidate, i = stem, 2
        while candidate.lower() in used:
            candidate, i = f"{stem}-{i}", i + 1
        used.add(candidate.lower())
        out[name] = f"{candidate}.html"
    return out


def _read_manifest(out_dir: Path) -> list[str] | None:
    """Files a previous report wrote (relative, inside ``out_dir``); None when there is no manifest."""
    files = read_manifest_files(out_dir / MANIFEST, "report manifest")
    if files is None:
        return None
    safe = []
    for rel in files:
        if not isinstance(rel, str) or not rel or os.path.isabs(rel) or ".." in Path(rel).parts:
            continue  # a hand-edited manifest must never point outside the report folder
        safe.append(rel)
    return safe


def _write_manifest(out_dir: Path, files: list[str]) -> None:
    manifest = {"version": MANIFEST_VERSION, "files": files}
    replace_file_bytes(out_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _check_out_dir(out_dir: Path, roots: list[str]) -> list[str]:
    check_outside_roots([out_dir], roots, what="the report")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder.")
    owned = _read_manifest(out_dir) if out_dir.is_dir() else None
    if owned is None and out_dir.is_dir() and any(out_dir.iterdir()):
        raise UserError(
            f"--out {out_dir} already holds files that pmllm-batch did not make; choose an empty or new folder."
        )
    return owned or []


def _thumb_name(content_hash: str, size: int) -> str:
    return f"{THUMBS}/{content_hash[:24]}-{size}.jpg"


def _make_thumb(path: str, target: Path, size: int, max_pixels: int) -> None:
    """Decode (EXIF-oriented), shrink to ``size`` on the long side, save as JPEG without metadata."""
    photo = decode_photo(path, max_pixels=max_pixels)
    img = photo.image
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGBA").convert("RGB") if "A" in img.mode or img.mode == "P" else img.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, optimize=True)
    replace_file_bytes(target, buf.getvalue())


def _environment() -> jinja2.Environment:
    import jinja2  # the report's template engine; imported here so other outputs do not need it

    return jinja2.Environment(
        loader=jinja2.PackageLoader("pmllm_batch.outputs", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _person(
    view: RankingView, row: ProfileRow, page: str, *, top: int, shares: Sequence[float], model_id: int | None,
    thumb_size: int,
) -> ReportPerson:
    """One person's column: their top ``top`` of the view (never a photo they rejected), stars from their whole
    ranking (their own where they rated the photo) and what the ranking learned from."""
    name = row.name
    stars = view.stars(name, shares, model_id=model_id)
    learned = view.learned(name, model_id=model_id)
    shown = view.ranking(name, model_id=model_id)  # ranks 1..n within what is shown, as export numbers them
    person = ReportPerson(name=name, page=page, persona=row.persona, ranked=len(shown), learned=learned.describe(),
                          learned_from=learned.learned_from)
    rejected = learned.rejected
    for item in [r for r in shown if r.content_hash not in rejected][:top]:
        person.photos.append(
            ReportPhoto(
                rank=item.rank,
                path=item.path,
                name=os.path.basename(item.path),
                score=item.score,
                stars=stars[item.content_hash],
                taken_at=_display_date(item.taken_at),
                thumb=_thumb_name(item.content_hash, thumb_size),
                also=tuple(os.path.basename(p) for p in item.paths[1:]),
                group_size=item.group_size,
                yours=item.content_hash in learned.verdicts,
                content_hash=item.content_hash,
            )
        )
    return person


# ---------------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------------


def build_report(
    store: Store,
    out: str | os.PathLike[str],
    *,
    profiles: Sequence[str] | None = None,
    top: int = DEFAULT_TOP,
    paths: Sequence[str | os.PathLike[str]] | None = None,
    thumb_size: int = DEFAULT_THUMB_SIZE,
    shares: Sequence[float] = DEFAULT_SHARES,
    max_pixels: int = 100_000_000,
    group: bool = True,
    scope: Scope | None = None,
    model_id: int | None = None,
    learn: LearnSettings | None = None,
    zero_shot: bool = False,
) -> ReportSummary:
    """Write the gallery into ``out``.

    Args:
        store: Library database.
        out: Report folder (created; must lie outside the photo folders).
        profiles: Whose columns and pages, in this order; None for every stored profile.
        top: Photos per person.
        paths: Only photos at or under these files/folders; ranks are counted within what is shown (as ``export
            --under`` counts them), stars still come from the whole ranking.
        thumb_size: Longest thumbnail side in pixels.
        shares: Percent of each ranking for 5, 4, 3, 2 and 1 stars.
        max_pixels: Decompression-bomb guard for thumbnail decoding (``[scan] max_pixels``).
        group: Each burst / near-duplicate group once per person (their best of it, with the group's size).
        scope: Only photos in these folders (added to ``paths``) and capture dates (stars still from everything).
        model_id: Whose scores (default: the library's model); its demo flag and note head the gallery.
        learn: ``[learn]`` settings: each person's ranking learns from their own stars, a photo they rejected is
            never among their top, a photo they rated shows their own stars (default settings when None).
        zero_shot: The profile-only rankings (``--zero-shot``).

    Returns:
        What was written; photos whose thumbnail could not be made (deleted since ranking, corrupt) are listed with
        their reason and shown without an image.

    Raises:
        UserError: Unknown profile, no profiles, ``out`` overlaps a photo folder or holds foreign files, or the
            report cannot be written.
    """
    out_dir = Path(out).expanduser().absolute()
    names = list(dict.fromkeys(profiles)) if profiles else [row.name for row in store.list_profiles()]
    if not names:
        raise UserError("no profiles are stored yet; add one with `pmllm-batch profile add FILE.toml`.")
    rows = {name: store.get_profile(name) for name in names}  # unknown names fail here, before any write
    owned = _check_out_dir(out_dir, store.photo_roots())
    current = store.model(model_id) if model_id is not None else store.current_model()
    view_scope = scope or Scope()
    if paths:
        under = [*(resolve_scopes(paths) or []), *(view_scope.under or ())]
        view_scope = dataclasses.replace(view_scope, under=tuple(dict.fromkeys(under)))
    scopes = list(view_scope.under) if view_scope.under is not None else None
    view = RankingView(store, group=group, scope=view_scope, learn=learn, zero_shot=zero_shot)
    pages = page_names(names)

    people: list[ReportPerson] = []
    wanted: dict[str, tuple[str, str]] = {}  # thumb relative path -> (content hash, a photo path)
    for name in names:
        person = _person(view, rows[name], pages[name], top=top, shares=shares, model_id=model_id,
                         thumb_size=thumb_size)
        for photo in person.photos:
            wanted.setdefault(str(photo.thumb), (photo.content_hash, photo.path))
        people.append(person)

    summary = ReportSummary(
        out=out_dir,
        index=out_dir / INDEX,
        people=people,
        demo=current is not None and current["demo"],
        model=current["fingerprint"] if current else None,
        preset=current["preset"] if current else None,
        note=current["note"] if current else "",
        failures=[f for f in store.failures() if in_scope(f["path"], scopes)],
    )
    planned = [*wanted, INDEX, *(person.page for person in people)]
    try:
        (out_dir / THUMBS).mkdir(parents=True, exist_ok=True)
        # Record the planned names first: a run killed half-way leaves only files the next run may replace.
        _write_manifest(out_dir, sorted(set(owned) | set(planned)))
        failed_thumbs: dict[str, ReportProblem] = {}
        for thumb, (_, path) in wanted.items():
            target = out_dir / thumb
            if thumb in owned and target.is_file():
                summary.thumbnails_reused += 1  # named by content hash and size: the same photo, the same file
                continue
            try:
                _make_thumb(path, target, thumb_size, max_pixels)
                summary.thumbnails_made += 1
            except DecodeError as exc:
                failed_thumbs[thumb] = ReportProblem(path=path, reason=exc.reason, message=exc.message)
        for person in people:
            for photo in person.photos:
                if photo.thumb in failed_thumbs:
                    problem = failed_thumbs[photo.thumb]
                    photo.thumb, photo.problem = None, f"{problem.reason}: {problem.message}"
        summary.problems = sorted(failed_thumbs.values(), key=lambda p: p.path)

        env = _environment()
        context = {
            "summary": summary,
            "people": people,
            "version": __version__,
            "disclaimer": (summary.note or demo_disclaimer(summary.preset or "")) if summary.demo else "",
            "top": top,
            "scoped": not view_scope.everything,
            "scopes": scopes or [],
            "scope_text": view_scope.describe(),
        }
        written = [thumb for thumb in wanted if thumb not in failed_thumbs]
        replace_file_bytes(out_dir / INDEX, env.get_template("report/index.html.j2").render(**context).encode())
        written.append(INDEX)
        for person in people:
            html = env.get_template("report/person.html.j2").render(person=person, **context)
            replace_file_bytes(out_dir / person.page, html.encode())
            written.append(person.page)

        for rel in owned:  # stale files of the previous report (only ones it listed)
            if rel not in written:
                stale = out_dir / rel
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink()
                    summary.removed += 1
        _write_manifest(out_dir, sorted(written))
    except OSError as exc:
        raise UserError(f"cannot write the report {out_dir}: {exc.strerror or exc}.") from None
    return summary

