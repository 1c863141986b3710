"""XMP sidecars: one person's stars, every person's keywords and our scores, next to the photos.

``pmllm-batch xmp`` and the daemon (``[xmp] profile``) call :func:`write_sidecars` / :func:`refresh_sidecars`. What is
written into each sidecar (``photo.jpg.xmp`` with ``append`` naming, ``photo.xmp`` with ``replace``):

* ``xmp:Rating``: 1-5 stars of the rating profile, from its rank percentile (``[xmp] stars_*``) in the person's
  learned ranking (:mod:`pmllm_batch.outputs.personal`); a photo the person rated (``pmllm-batch rate``, a sidecar,
  darktable, digiKam) gets *their* stars, and a rejected one ``-1`` (XMP's "rejected"), never our 5; read by
  Lightroom, darktable, digiKam, Bridge, exiftool;
* ``lr:hierarchicalSubject``: ``pmllm|<profile>|<n> stars`` for every profile that scored the photo (Lightroom,
  darktable, digiKam);
* ``digiKam:TagsList``: ``pmllm/<profile>/<n> stars`` (digiKam);
* ``dc:subject``: ``pmllm: <profile> <n> stars`` (flat keywords, every XMP reader);
* our namespace ``pmllm`` (``xmp_engine.NS_URI``): ``pmllm:scores`` (Seq of {profile, score, rank, stars}),
  ``pmllm:modelFingerprint``, ``pmllm:writtenRating`` (the last ``xmp:Rating`` we wrote), ``pmllm:ratingProfile``
  (whose stars that was), ``pmllm:writtenKeywords`` (the flat keywords we wrote, removed again on the next run).

Rules: every other property of an existing sidecar is kept (the sidecar is parsed and re-serialised by exiv2, the
XMP engine digiKam uses); a rating that differs from ``pmllm:writtenRating`` was set by the user and is kept unless
``overwrite_ratings``; nothing is written when nothing would change, so a second run changes no byte; a new sidecar
is written to a temporary sibling and renamed over the old one; photo files are never opened at all. Per-file
problems (photo gone, sidecar not XMP, read-only folder) are counted with a reason and the run goes on.

Stale marks are cleaned (:data:`CLEAN_REASONS`): besides the sidecars of ranked photos, every sidecar next to a path the
photos table knows (any status: skipped as too small or blank, failed, missing) in scope is read, and one that carries
our marks while its photo is in no ranking of the model written loses them: our rating (only while it is still the one
we wrote), our keywords and our namespace, fingerprint included. A ranked photo's sidecar loses the keywords of
profiles that were removed or no longer rank it, and our rating when the rating profile no longer ranks it. The user's
rating, title, labels and keywords are never touched; a sidecar left with nothing at all (it held only our marks) is
deleted.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import stat
import xml.parsers.expat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pmllm_batch.db import Store
from pmllm_batch.log import get_logger
from pmllm_batch.outputs.bursts import RankingView
from pmllm_batch.outputs.files import replace_file_bytes
from pmllm_batch.outputs.scope import Scope, resolve_scopes
from pmllm_batch.outputs.stars import star_label
from pmllm_batch.xmp_engine import NS_PREFIX, captured_exiv2_messages, exiv2_module

if TYPE_CHECKING:
    from pmllm_batch.config import LearnSettings, Settings

log = get_logger("outputs.xmp")

KEYWORD_ROOT = "pmllm"
FLAT_PREFIX = "pmllm: "
NAMINGS = ("append", "replace")

K_RATING = "Xmp.xmp.Rating"
K_HIER = "Xmp.lr.hierarchicalSubject"
K_TAGS = "Xmp.digiKam.TagsList"
K_SUBJECT = "Xmp.dc.subject"
K_OURS = f"Xmp.{NS_PREFIX}."
K_LAST_RATING = f"{K_OURS}writtenRating"
K_RATING_PROFILE = f"{K_OURS}ratingProfile"
K_MODEL = f"{K_OURS}modelFingerprint"
K_KEYWORDS = f"{K_OURS}writtenKeywords"
K_SCORES = f"{K_OURS}scores"

# Problem reasons, each counted in XmpSummary.problems.
REASONS = (
    "photo_missing",  # the photo is not on disk any more (deleted or moved since it was ranked)
    "corrupt_sidecar",  # the existing sidecar is not XMP (not XML, truncated, not RDF)
    "sidecar_not_a_file",  # the sidecar path is a folder or a symbolic link
    "unreadable_sidecar",  # the existing sidecar cannot be read
    "read_only_folder",  # the photo's folder may not be written
    "read_only_sidecar",  # the existing sidecar is marked read-only
    "sidecar_shared",  # replace naming: another photo of the same stem already uses this sidecar
    "write_failed",  # any other file-system error while writing
    "changed_while_writing",  # another program (the person's photo app) wrote the sidecar while it was being merged
)

# Why stale marks of ours were taken out of a sidecar, each counted in XmpSummary.cleaned (one reason per sidecar, the
# first that applies), with the words the summary line uses.
CLEAN_REASONS = {
    "removed_profile": "lost a removed person's keywords",  # keywords/scores of a profile no longer stored
    "left_ranking": "left the ranking",  # the photo is in no ranking any more, or left a person's ranking
}


def count_of(n: int, singular: str, plural: str | None = None) -> str:
    """``"1 sidecar"``, ``"2 sidecars"``; ``plural`` for irregular words (``count_of(n, "person", "people")``)."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


# ---------------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class SidecarProblem:
    """One photo whose sidecar was left alone, and why."""

    path: str  # the photo
    sidecar: str
    reason: str  # one of REASONS
    message: str  # one human sentence


@dataclass
class CleanedSidecar:
    """One sidecar that lost stale marks of ours, and why."""

    path: str  # the photo
    sidecar: str
    reason: str  # one of CLEAN_REASONS
    deleted: bool = False  # it held nothing but our marks and was deleted


@dataclass
class XmpSummary:
    """What one run did. ``created + updated + deleted + unchanged + len(problems) == photos``."""

    profile: str  # whose stars (xmp:Rating); "" when the daemon hook is switched off
    profiles: list[str] = field(default_factory=list)  # whose keywords and scores
    naming: str = "append"
    dry_run: bool = False
    model: str | None = None  # fingerprint of the scores written
    # Photo files in scope with at least one score, plus files that left every ranking whose sidecar carries marks
    photos: int = 0
    created: int = 0  # new sidecars (with dry_run: would be created)
    updated: int = 0  # existing sidecars changed
    deleted: int = 0  # sidecars that held only stale marks of ours, deleted
    unchanged: int = 0  # already up to date: not written, not a byte changed
    kept_ratings: int = 0  # of created/updated/unchanged: a user-set rating kept instead of ours
    problems: list[SidecarProblem] = field(default_factory=list)
    cleaned: list[CleanedSidecar] = field(default_factory=list)  # of updated/deleted: stale marks taken out

    def cleaned_counts(self) -> dict[str, int]:
        """Reason -> number of sidecars cleaned, in :data:`CLEAN_REASONS` order, non-zero only."""
        counts = {reason: 0 for reason in CLEAN_REASONS}
        for c in self.cleaned:
            counts[c.reason] = counts.get(c.reason, 0) + 1
        return {k: v for k, v in counts.items() if v}

    def problem_counts(self) -> dict[str, int]:
        """Reason -> number of photos, in :data:`REASONS` order, non-zero only."""
        counts = {reason: 0 for reason in REASONS}
        for p in self.problems:
            counts[p.reason] = counts.get(p.reason, 0) + 1
        return {k: v for k, v in counts.items() if v}

    def as_dict(self) -> dict[str, object]:
        """JSON-able form (``xmp --json``)."""
        return {
            "profile": self.profile,
            "profiles": self.profiles,
            "naming": self.naming,
            "dry_run": self.dry_run,
            "model": self.model,
            "photos": self.photos,
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "kept_ratings": self.kept_ratings,
            "cleaned": len(self.cleaned),
            "cleaned_counts": self.cleaned_counts(),
            "cleaned_sidecars": [vars(c) for c in self.cleaned],
            "problem_counts": self.problem_counts(),
            "problems": [vars(p) for p in self.problems],
        }

    def cleaned_text(self) -> str:
        """``"3 sidecars cleaned: 2 lost a removed person's keywords, 1 left the ranking"`` ("" when none was)."""
        if not self.cleaned:
            return ""
        verb = "would be " if self.dry_run else ""
        reasons = ", ".join(f"{n} {CLEAN_REASONS.get(reason, reason)}" for reason, n in self.cleaned_counts().items())
        text = f"{count_of(len(self.cleaned), 'sidecar')} {verb}cleaned: {reasons}"
        if self.deleted:
            held = "it held" if self.deleted == 1 else "they held"
            text += f" ({count_of(self.deleted, 'sidecar')} {verb}deleted: {held} only our marks)"
        return text

    def describe(self) -> str:
        """The human summary: one counts line, the cleaned sidecars, then one line per problem grouped by reason."""
        verb = "would be " if self.dry_run else ""
        deleted = f"{self.deleted} {verb}deleted, " if self.deleted else ""
        counts = (
            f"{count_of(self.photos, 'photo')}; {count_of(self.created, 'sidecar')} {verb}created, "
            f"{self.updated} {verb}updated, {deleted}{self.unchanged} unchanged, "
            f"{count_of(self.kept_ratings, 'user rating')} kept, {len(self.problems)} skipped"
        )
        lines = [
            f"stars for {self.profile}, keywords for {', '.join(self.profiles)} ({self.naming} naming): {counts}"
            + (" (dry run: nothing was written)" if self.dry_run else "")
        ]
        if self.cleaned:
            lines.append(self.cleaned_text())
        problems = self.problem_counts()
        if problems:
            lines.append("skipped: " + ", ".join(f"{reason} {n}" for reason, n in problems.items()))
            for p in self.problems:
                lines.append(f"  {p.path}: {p.reason} — {p.message}")
        return "\n".join(lines) + "\n"


def mark_label(stars: int) -> str:
    """A verdict as our keywords say it: ``"4 stars"``, ``"1 star"``, or ``"rejected"`` for -1 (the person's own)."""
    return "rejected" if stars < 1 else star_label(stars)


@dataclass(frozen=True)
class ProfileMark:
    """One profile's verdict on one photo."""

    profile: str
    score: float
    rank: int
    stars: int


@dataclass(frozen=True)
class SidecarContent:
    """What we want in one photo's sidecar."""

    rating: int | None  # stars of the rating profile; None when that profile has not scored the photo
    rating_profile: str
    model: str
    marks: tuple[ProfileMark, ...]  # sorted by profile name
    # A burst member nobody sees (every person is shown a better one of its group): only an existing sidecar is
    # updated (our old keywords removed), none is created.
    cleanup_only: bool = False

    def hierarchical(self) -> list[str]:
        return [f"{KEYWORD_ROOT}|{m.profile}|{mark_label(m.stars)}" for m in self.marks]

    def tags_list(self) -> list[str]:
        return [f"{KEYWORD_ROOT}/{m.profile}/{mark_label(m.stars)}" for m in self.marks]

    def flat(self) -> list[str]:
        return [f"{FLAT_PREFIX}{m.profile} {mark_label(m.stars)}" for m in self.marks]


@dataclass
class MergeResult:
    """The new sidecar bytes (None: nothing to write) and what changed of ours."""

    data: bytes | None
    kept_rating: bool
    dropped_profiles: frozenset[str] = frozenset()  # profiles whose keywords/scores were there and are gone now
    dropped_rating: bool = False  # our rating was taken out (the rating profile does not rank the photo)
    delete: bool = False  # nothing at all is left: the sidecar held only our marks and is to be deleted

    def clean_reason(self, known_profiles: Iterable[str]) -> str | None:
        """Why stale marks were taken out (a :data:`CLEAN_REASONS` key), or None when none was."""
        if self.dropped_profiles - set(known_profiles):
            return "removed_profile"
        if self.dropped_rating or self.dropped_profiles:
            return "left_ranking"
        return None


class SidecarFormatError(Exception):
    """The existing sidecar is not XMP; ``str(exc)`` says why."""


# ---------------------------------------------------------------------------------------------------------------------
# The exiv2 engine
# ---------------------------------------------------------------------------------------------------------------------


class _XmpValue(Protocol):
    """What we read of an ``exiv2.Value`` (python-exiv2 ships no type information)."""

    def count(self) -> int: ...

    def toString(self, n: int) -> str: ...


class _XmpDatum(Protocol):
    """An ``exiv2.Xmpdatum``, or an ``XmpData`` iterator pointing at one (it answers the same calls)."""

    def key(self) -> str: ...

    def typeName(self) -> str: ...

    def toString(self) -> str: ...

    def value(self) -> _XmpValue: ...


class _XmpData(Protocol):
    """An ``exiv2.XmpData``: the properties of one sidecar."""

    def __iter__(self) -> Iterator[_XmpDatum]: ...

    def __setitem__(self, key: str, value: object) -> None: ...

    def findKey(self, key: object) -> _XmpDatum: ...

    def end(self) -> _XmpDatum: ...

    def erase(self, pos: _XmpDatum) -> object: ...

    def add(self, *args: object) -> object: ...




def parse_sidecar(data: bytes) -> _XmpData:
    """Parse sidecar bytes into an ``exiv2.XmpData``.

    Raises:
        SidecarFormatError: Not well-formed XML, not an XMP packet, or XMP the toolkit cannot decode.
    """
    exiv2 = exiv2_module()
    parser = xml.parsers.expat.ParserCreate()
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise SidecarFormatError(f"not well-formed XML ({exc})") from None
    with captured_exiv2_messages() as messages:
        try:
            image = exiv2.ImageFactory.open(data)
            if image.imageType() != exiv2.ImageType.xmp:
                raise SidecarFormatError("not an XMP packet")
            image.readMetadata()
        except exiv2.Exiv2Error as exc:
            raise SidecarFormatError(f"not an XMP packet ({exc.message})") from None
        xmp: _XmpData = exiv2.XmpData()
        for datum in image.xmpData():  # a copy that does not depend on the image object's lifetime
            xmp.add(datum)
    for level, text in messages.messages:
        if level >= logging.ERROR or "Failed to decode" in text:
            raise SidecarFormatError(f"XMP that cannot be decoded ({text})")
        log.debug("exiv2: %s", text)
    return xmp


def serialize_sidecar(xmp: _XmpData) -> bytes:
    """``exiv2.XmpData`` as sidecar bytes, exactly as libexiv2 writes a ``.xmp`` file."""
    exiv2 = exiv2_module()
    image = exiv2.ImageFactory.create(exiv2.ImageType.xmp)
    image.setXmpData(xmp)
    image.writeMetadata()
    return bytes(image.io().data())


def _items(datum: _XmpDatum) -> tuple[str, ...]:
    value = datum.value()
    if datum.typeName() in ("XmpBag", "XmpSeq", "XmpAlt"):
        return tuple(value.toString(i) for i in range(value.count()))
    return (datum.toString(),)


def _snapshot(xmp: _XmpData) -> list[tuple[str, str, tuple[str, ...]]]:
    """Every property as (key, type, items), sorted: equal snapshots mean equal metadata."""
    return sorted((d.key(), d.typeName(), _items(d)) for d in xmp)


def _find(xmp: _XmpData, key: str) -> _XmpDatum | None:
    exiv2 = exiv2_module()
    it = xmp.findKey(exiv2.XmpKey(key))
    return None if it == xmp.end() else it


def _erase(xmp: _XmpData, keys: Iterable[str]) -> None:
    for key in list(keys):
        it = _find(xmp, key)
        if it is not None:
            xmp.erase(it)


def _set_array(xmp: _XmpData, key: str, items: Sequence[str], type_name: str) -> None:
    exiv2 = exiv2_module()
    _erase(xmp, [key])
    if not items:
        return
    value = exiv2.XmpArrayValue(exiv2.TypeId.xmpSeq if type_name == "XmpSeq" else exiv2.TypeId.xmpBag)
    for item in items:
        value.read(item)
    xmp[key] = value


def _array_items(xmp: _XmpData, key: str) -> tuple[list[str], str | None]:
    it = _find(xmp, key)
    if it is None:
        return [], None
    return list(_items(it)), it.typeName()


def _marked_profiles(xmp: _XmpData) -> set[str]:
    """Profile names our keywords and scores in ``xmp`` speak of."""
    names: set[str] = set()
    for key, sep in ((K_HIER, "|"), (K_TAGS, "/")):
        for k in _array_items(xmp, key)[0]:
            head = f"{KEYWORD_ROOT}{sep}"
            if k.startswith(head) and sep in k[len(head):]:
                names.add(k[len(head): k.rindex(sep)])
    for k in _array_items(xmp, K_SUBJECT)[0]:
        if k.startswith(FLAT_PREFIX) and k.count(" ") >= 3:  # "pmllm: <profile> <n> stars"
            names.add(k[len(FLAT_PREFIX):].rsplit(" ", 2)[0])
    score_name = re.compile(rf"^{re.escape(K_SCORES)}\[\d+\]/{NS_PREFIX}:profile$")
    names.update(d.toString() for d in xmp if score_name.match(d.key()))
    return names


def carries_our_marks(xmp: _XmpData) -> bool:
    """Does ``xmp`` hold anything we write: a property in our namespace or one of our keywords?"""
    if any(d.key().startswith(K_OURS) for d in xmp):
        return True
    return any(
        k == KEYWORD_ROOT or k.startswith(prefix)
        for key, prefix in ((K_HIER, f"{KEYWORD_ROOT}|"), (K_TAGS, f"{KEYWORD_ROOT}/"), (K_SUBJECT, FLAT_PREFIX))
        for k in _array_items(xmp, key)[0]
    )


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return round(float(text))
    except ValueError:
        return None


def merge_sidecar(
    existing: bytes | None,
    content: SidecarContent,
    *,
    known_profiles: Iterable[str] = (),
    overwrite_ratings: bool = False,
) -> MergeResult:
    """Merge our properties into a sidecar, keeping everything else.

    Our marks that ``content`` no longer carries are taken out: keywords and scores of profiles not in it, and our
    rating when ``content.rating`` is None (a rating that differs from ``pmllm:writtenRating`` is the user's and
    stays); with no marks at all (the photo is in no ranking) our whole namespace goes, fingerprint included.

    Args:
        existing: The sidecar's current bytes, or None when there is none.
        content: Stars, keywords and scores for this photo.
        known_profiles: Every stored profile name, so flat keywords of a profile are recognised as ours even when a
            run before wrote no ``pmllm:writtenKeywords`` list.
        overwrite_ratings: Replace ``xmp:Rating`` even when the user changed it (never removes it).

    Returns:
        New bytes, or ``data=None`` when the merged metadata equals the existing one (then nothing must be written)
        or when nothing at all is left (``delete``: an existing sidecar that held only our marks; nothing to create).

    Raises:
        SidecarFormatError: ``existing`` is not XMP.
    """
    exiv2 = exiv2_module()
    xmp: _XmpData = parse_sidecar(existing) if existing is not None else exiv2.XmpData()
    before = _snapshot(xmp)
    marked_before = _marked_profiles(xmp)

    # Rating: ours only while the sidecar still holds the rating we wrote last time.
    kept = False
    dropped_rating = False
    current_it = _find(xmp, K_RATING)
    current = current_it.toString() if current_it is not None else None
    last_it = _find(xmp, K_LAST_RATING)
    last = last_it.toString() if last_it is not None else None
    user_set = current is not None and (last is None or _int_or_none(current) != _int_or_none(last))
    if content.rating is not None:
        if user_set and not overwrite_ratings:
            kept = _int_or_none(current) != content.rating
        else:
            xmp[K_RATING] = str(content.rating)
            xmp[K_LAST_RATING] = str(content.rating)
            xmp[K_RATING_PROFILE] = content.rating_profile
    elif current is not None and not user_set:
        _erase(xmp, [K_RATING])  # our stars for a photo the rating profile no longer ranks
        dropped_rating = True

    # Keywords: drop every one of ours, keep the user's in their order, then add ours.
    flat_ours, _ = _array_items(xmp, K_KEYWORDS)
    ours = set(flat_ours)
    for name in known_profiles:
        ours.update(f"{FLAT_PREFIX}{name} {mark_label(s)}" for s in (-1, 1, 2, 3, 4, 5))
    for key, mine, is_ours in (
        (K_HIER, content.hierarchical(), lambda k: k == KEYWORD_ROOT or k.startswith(f"{KEYWORD_ROOT}|")),
        (K_TAGS, content.tags_list(), lambda k: k == KEYWORD_ROOT or k.startswith(f"{KEYWORD_ROOT}/")),
        (K_SUBJECT, content.flat(), lambda k: k in ours or k.startswith(FLAT_PREFIX)),
    ):
        items, type_name = _array_items(xmp, key)
        default_type = "XmpSeq" if key == K_TAGS else "XmpBag"
        kept_items = [k for k in items if not is_ours(k)]
        _set_array(xmp, key, kept_items + mine, type_name or default_type)

    # Our namespace (rating fields above stay as they are while the rating profile ranks the photo).
    keep = (K_LAST_RATING, K_RATING_PROFILE) if content.rating is not None else ()
    _erase(xmp, [d.key() for d in xmp if d.key().startswith(K_OURS) and d.key() not in keep])
    if content.marks:  # none: the photo is in no ranking, and no fingerprint of ours stays either
        xmp[K_MODEL] = content.model
        _set_array(xmp, K_KEYWORDS, content.flat(), "XmpBag")
        seq = exiv2.XmpTextValue()
        seq.setXmpArrayType(exiv2.XmpValue.XmpArrayType.xaSeq)
        xmp.add(exiv2.XmpKey(K_SCORES), seq)
        for i, mark in enumerate(content.marks, start=1):
            item = exiv2.XmpTextValue()
            item.setXmpStruct()
            xmp.add(exiv2.XmpKey(f"{K_SCORES}[{i}]"), item)
            base = f"{K_SCORES}[{i}]/{NS_PREFIX}:"
            xmp[f"{base}profile"] = mark.profile
            xmp[f"{base}score"] = f"{mark.score:.4f}"
            xmp[f"{base}rank"] = str(mark.rank)
            xmp[f"{base}stars"] = str(mark.stars)

    dropped = frozenset(marked_before - {m.profile for m in content.marks})
    after = _snapshot(xmp)
    if existing is not None and after == before:
        return MergeResult(data=None, kept_rating=kept)
    if not after:  # an empty packet is no sidecar: delete the one that held only our marks, create none
        return MergeResult(data=None, kept_rating=kept, dropped_profiles=dropped, dropped_rating=dropped_rating,
                           delete=existing is not None)
    return MergeResult(data=serialize_sidecar(xmp), kept_rating=kept, dropped_profiles=dropped,
                       dropped_rating=dropped_rating)


# ---------------------------------------------------------------------------------------------------------------------
# Planning: which photo gets which content
# ---------------------------------------------------------------------------------------------------------------------


def sidecar_path(photo: str | os.PathLike[str], naming: str = "append") -> Path:
    """``photo.jpg`` -> ``photo.jpg.xmp`` (append: darktable, digiKam) or ``photo.xmp`` (replace: Lightroom)."""
    p = Path(photo)
    if naming == "append":
        return p.with_name(p.name + ".xmp")
    if naming == "replace":
        return p.with_suffix(".xmp")
    raise ValueError(f"unknown sidecar naming {naming!r}; use one of {', '.join(NAMINGS)}")


def output_scope(scope: Scope | None, paths: Sequence[str | os.PathLike[str]] | None) -> Scope:
    """``scope`` (everything when None) with the ``PATH`` arguments added to its folders."""
    where = scope or Scope()
    if paths:
        where = dataclasses.replace(where, under=tuple([*(resolve_scopes(paths) or []), *(where.under or ())]))
    return where


def stale_sidecars(
    store: Store, planned: Iterable[str], *, naming: str = "append", scope: Scope | None = None
) -> dict[str, Path]:
    """Photo path -> its existing sidecar, for every path the photos table knows (any status: skipped, failed,
    missing, or ok but unranked) in ``scope`` whose sidecar no planned photo of ``planned`` has. Whether one carries
    our marks is for the caller to read; sidecars that are links or folders are left out."""
    where = scope or Scope()
    taken = {sidecar_path(p, naming) for p in planned}
    out: dict[str, Path] = {}
    for path, rec in sorted(store.photo_index().items()):
        if not where.paths_in([path]) or not where.when_in(rec.taken_at, rec.mtime_ns):
            continue
        sidecar = sidecar_path(path, naming)
        if sidecar in taken or sidecar.is_symlink() or not sidecar.is_file():
            continue
        taken.add(sidecar)  # replace naming: two unranked files of one stem share it
        out[path] = sidecar
    return out


def _read_marked(sidecar: Path) -> bool:
    """Does this sidecar (of a photo in no ranking) carry marks of ours? Unreadable or not XMP: not known to."""
    try:
        data = sidecar.read_bytes()
    except OSError:
        return False
    if KEYWORD_ROOT.encode() not in data:  # our namespace URI and every keyword of ours name it
        return False
    try:
        return carries_our_marks(parse_sidecar(data))
    except SidecarFormatError:
        return False


def plan_sidecars(
    store: Store,
    profile: str,
    *,
    shares: Sequence[float],
    paths: Sequence[str | os.PathLike[str]] | None = None,
    group: bool = True,
    scope: Scope | None = None,
    model_id: int | None = None,
    learn: LearnSettings | None = None,
) -> tuple[dict[str, SidecarContent], list[str], str | None]:
    """What every photo file in scope should carry.

    Stars are computed against each person's whole ranking (current model), so a folder's stars agree with the
    library's; ``paths`` and ``scope`` only limit which files get a sidecar. Every file of a ranked photo gets one
    (exact copies and the RAW twin of a RAW+JPEG pair carry the same verdicts). With ``group`` a person's verdict
    goes to their best photo of each burst / near-duplicate group only (stars over the grouped ranking).

    ``model_id`` names whose scores (default: the library's model); the sidecars name its fingerprint. Rankings are
    learned from each person's stars (``learn``), their own stars on what they rated (:meth:`RankingView.stars`).

    Returns:
        (photo path -> content, sorted; profile names; model fingerprint or None before any scoring).

    Raises:
        ProfileError: ``profile`` is not stored.
    """
    store.get_profile(profile)  # an unknown name fails here, with the known ones listed
    names = sorted(p.name for p in store.list_profiles())
    current = store.model(model_id) if model_id is not None else store.current_model()
    if current is None:
        return {}, names, None
    model = current["fingerprint"]
    mid = current["id"]
    view = RankingView(store, group=group, learn=learn)
    marks: dict[str, list[ProfileMark]] = {}
    files: dict[str, tuple[str, ...]] = {}  # content hash -> every file of it
    dates: dict[str, tuple[str | None, int | None]] = {}
    for name in names:
        ranking = view.full(name, model_id=mid)
        stars = view.stars(name, shares, model_id=mid)  # the person's own where they rated the photo
        for item in ranking:
            marks.setdefault(item.content_hash, []).append(
                ProfileMark(profile=name, score=item.score, rank=item.rank, stars=stars[item.content_hash])
            )
        for item in store.ranking(name, model_id=mid) if group else ranking:
            files.setdefault(item.content_hash, view.files(item))
            dates.setdefault(item.content_hash, (item.taken_at, item.mtime_ns))
    where = output_scope(scope, paths)
    plan: dict[str, SidecarContent] = {}
    for content_hash, paths_of in files.items():
        if not where.when_in(*dates[content_hash]):
            continue
        verdicts = tuple(sorted(marks.get(content_hash, ()), key=lambda m: m.profile))
        rating = next((m.stars for m in verdicts if m.profile == profile), None)
        content = SidecarContent(rating=rating, rating_profile=profile, model=model, marks=verdicts,
                                 cleanup_only=not verdicts)
        for path in where.paths_in(sorted(paths_of)):
            plan[path] = content
    return dict(sorted(plan.items())), names, model


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


def _denies_writing(st: os.stat_result) -> bool:
    # No write bit for anyone: the user marked it read-only. Honoured even when running as root, who could write.
    return not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def _write_problem(folder: Path, sidecar: Path, existing_st: os.stat_result | None) -> tuple[str, str] | None:
    try:
        folder_st = folder.stat()
    except OSError as exc:
        return "write_failed", f"the folder cannot be read ({exc.strerror or exc})"
    if _denies_writing(folder_st) or not os.access(folder, os.W_OK | os.X_OK):
        return "read_only_folder", f"the folder {folder} is read-only"
    if existing_st is not None and _denies_writing(existing_st):
        return "read_only_sidecar", f"the sidecar {sidecar.name} is marked read-only"
    return None


def _changed_since(sidecar: Path, read: os.stat_result | None) -> bool:
    """Whether the sidecar is no longer the file that was read (``read``: its stat then; None: there was none), e.g.
    because the person's photo app saved their new stars meanwhile: writing our merge would lose them."""
    try:
        now = sidecar.stat()
    except FileNotFoundError:
        return read is not None
    except OSError:
        return False  # the write itself says what is wrong
    if read is None:
        return True
    return (now.st_ino, now.st_size, now.st_mtime_ns) != (read.st_ino, read.st_size, read.st_mtime_ns)


def _update_sidecar(
    summary: XmpSummary,
    photo: str,
    sidecar: Path,
    content: SidecarContent,
    *,
    names: Sequence[str],
    overwrite_ratings: bool,
    ranked: bool = True,
) -> None:
    """Merge ``content`` into ``photo``'s sidecar and count the outcome in ``summary`` (``ranked=False``: the photo is
    in no ranking any more; its sidecar is only cleaned, even when the photo itself is gone)."""
    summary.photos += 1

    def problem(reason: str, message: str) -> None:
        summary.problems.append(SidecarProblem(path=photo, sidecar=str(sidecar), reason=reason, message=message))

    if ranked and not os.path.isfile(photo):
        problem("photo_missing", "the photo is no longer on disk (deleted or moved since it was ranked)")
        return
    existing: bytes | None = None
    existing_st: os.stat_result | None = None
    if os.path.lexists(sidecar):
        if sidecar.is_symlink() or not sidecar.is_file():
            problem("sidecar_not_a_file", f"{sidecar.name} is a folder or a link, not a sidecar file")
            return
        try:
            existing_st = sidecar.stat()
            existing = sidecar.read_bytes()
        except OSError as exc:
            problem("unreadable_sidecar", f"the sidecar cannot be read ({exc.strerror or exc})")
            return
    try:
        result = merge_sidecar(existing, content, known_profiles=names, overwrite_ratings=overwrite_ratings)
    except SidecarFormatError as exc:
        problem("corrupt_sidecar", f"the existing sidecar is {exc}; it was left as it is")
        return
    if result.data is None and not result.delete:
        summary.unchanged += 1
        summary.kept_ratings += result.kept_rating
        return
    blocked = _write_problem(sidecar.parent, sidecar, existing_st)
    if blocked is not None:
        problem(*blocked)
        return
    if not summary.dry_run and _changed_since(sidecar, existing_st):
        problem("changed_while_writing", "another program wrote the sidecar while it was being merged; it was left "
                "as that program wrote it (the next run merges it)")
        return
    if not summary.dry_run:
        try:
            if result.delete:
                sidecar.unlink()
            else:
                assert result.data is not None
                mode = stat.S_IMODE(existing_st.st_mode) if existing_st is not None else None
                replace_file_bytes(sidecar, result.data, mode=mode)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                problem("read_only_folder", f"the folder {sidecar.parent} cannot be written ({exc.strerror})")
            else:
                problem("write_failed", f"the sidecar cannot be written ({exc.strerror or exc})")
            return
    if existing is None:
        summary.created += 1
    elif result.delete:
        summary.deleted += 1
    else:
        summary.updated += 1
    summary.kept_ratings += result.kept_rating
    reason = result.clean_reason(names) if ranked else "left_ranking"
    if existing is not None and reason is not None:
        summary.cleaned.append(CleanedSidecar(path=photo, sidecar=str(sidecar), reason=reason, deleted=result.delete))


def write_sidecars(
    store: Store,
    profile: str,
    *,
    naming: str = "append",
    shares: Sequence[float],
    paths: Sequence[str | os.PathLike[str]] | None = None,
    dry_run: bool = False,
    overwrite_ratings: bool = False,
    group: bool = True,
    scope: Scope | None = None,
    model_id: int | None = None,
    learn: LearnSettings | None = None,
) -> XmpSummary:
    """Create or update the XMP sidecar of every scored photo file (in ``paths``, when given), and clean stale marks
    of ours out of the sidecars of photos that left the rankings (see the module's docstring).

    Args:
        store: Library database.
        profile: Whose stars go into ``xmp:Rating`` (keywords and scores are written for every profile).
        naming: "append" (``photo.jpg.xmp``) or "replace" (``photo.xmp``).
        shares: Percent of each ranking for 5, 4, 3, 2 and 1 stars (``XmpSettings.star_shares()``).
        paths: Only photos at or under these files/folders; None for every photo.
        dry_run: Decide everything, write nothing.
        overwrite_ratings: Replace ratings the user changed in their app.
        group: A person's verdict on their best photo of each burst / near-duplicate group only.
        scope: Only photos in these folders and capture dates (stars still from the whole ranking).
        model_id: Whose scores (default: the library's model: ``Store.current_model``).
        learn: ``[learn]`` settings (None: the defaults): stars of learned rankings, the person's own where rated.

    Returns:
        The counts, every sidecar cleaned with its reason and every per-file problem with its reason.

    Raises:
        ProfileError: Unknown profile.
    """
    if naming not in NAMINGS:
        raise ValueError(f"unknown sidecar naming {naming!r}; use one of {', '.join(NAMINGS)}")
    plan, names, model = plan_sidecars(store, profile, shares=shares, paths=paths, group=group, scope=scope,
                                       model_id=model_id, learn=learn)
    summary = XmpSummary(profile=profile, profiles=names, naming=naming, dry_run=dry_run, model=model)
    claimed: dict[Path, str] = {}
    for photo, content in plan.items():
        sidecar = sidecar_path(photo, naming)
        if content.cleanup_only and not os.path.lexists(sidecar):
            continue  # a burst member nobody is shown, never written before: nothing to clean up
        if sidecar in claimed and plan[claimed[sidecar]] is content:
            continue  # replace naming: a RAW+JPEG pair (or two copies) shares one sidecar, with one verdict
        if sidecar in claimed:
            summary.photos += 1
            summary.problems.append(SidecarProblem(
                path=photo, sidecar=str(sidecar), reason="sidecar_shared",
                message=f"{sidecar.name} already belongs to {claimed[sidecar]} (use --naming append)",
            ))
            continue
        claimed[sidecar] = photo
        _update_sidecar(summary, photo, sidecar, content, names=names, overwrite_ratings=overwrite_ratings)
    if model is not None:  # sidecars of photos that left every ranking, still carrying our marks
        gone = SidecarContent(rating=None, rating_profile=profile, model=model, marks=(), cleanup_only=True)
        for photo, sidecar in stale_sidecars(store, plan, naming=naming, scope=output_scope(scope, paths)).items():
            if _read_marked(sidecar):
                _update_sidecar(summary, photo, sidecar, gone, names=names, overwrite_ratings=False, ranked=False)
    for p in summary.problems:
        log.debug("xmp: %s: %s (%s)", p.path, p.reason, p.message)
    return summary


def refresh_sidecars(
    store: Store, settings: Settings, paths: Sequence[str | os.PathLike[str]] | None = None
) -> XmpSummary:
    """Daemon hook: keep sidecars fresh for ``[xmp] profile`` (a no-op returning an empty summary when it is "").

    Uses ``[xmp] naming``, ``overwrite_ratings`` and the star shares. Call it after each scored batch; only sidecars
    whose content changes are written (stars of older photos move when new photos arrive, so pass ``paths=None``
    unless the caller knows better). Paths that no longer exist are skipped as ``photo_missing``. Sidecars of photos
    that left the rankings (skipped, failed, missing, unscored by the current model) lose our marks, as with ``xmp``.
    """
    cfg = settings.xmp
    if not cfg.profile:
        return XmpSummary(profile="", naming=cfg.naming)
    return write_sidecars(
        store,
        cfg.profile,
        naming=cfg.naming,
        shares=cfg.star_shares(),
        paths=paths,
        overwrite_ratings=cfg.overwrite_ratings,
        group=settings.group.enabled,
        learn=settings.learn,
    )
