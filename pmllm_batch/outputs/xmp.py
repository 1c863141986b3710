"""XMP sidecars: one person's stars, every person's keywords and our scores, next to the photos.

``pmllm-batch xmp`` and the daemon (``[xmp] profile``) call :func:`write_sidecars` / :func:`refresh_sidecars`. What is
written into each sidecar (``photo.jpg.xmp`` with ``append`` naming, ``photo.xmp`` with ``replace``):

* ``xmp:Rating``: 1-5 stars of the rating profile, from its rank percentile (``[xmp] stars_*``); read by
  Lightroom, darktable, digiKam, Bridge, exiftool;
* ``lr:hierarchicalSubject``: ``pmllm|<profile>|<n> stars`` for every profile that scored the photo (Lightroom,
  darktable, digiKam);
* ``digiKam:TagsList``: ``pmllm/<profile>/<n> stars`` (digiKam);
* ``dc:subject``: ``pmllm: <profile> <n> stars`` (flat keywords, every XMP reader);
* our namespace ``pmllm`` (:data:`NS_URI`): ``pmllm:scores`` (Seq of {profile, score, rank, stars}),
  ``pmllm:modelFingerprint``, ``pmllm:writtenRating`` (the last ``xmp:Rating`` we wrote), ``pmllm:ratingProfile``
  (whose stars that was), ``pmllm:writtenKeywords`` (the flat keywords we wrote, removed again on the next run).

Rules: every other property of an existing sidecar is kept (the sidecar is parsed and re-serialised by exiv2, the
XMP engine digiKam uses); a rating that differs from ``pmllm:writtenRating`` was set by the user and is kept unless
``overwrite_ratings``; nothing is written when nothing would change, so a second run changes no byte; a new sidecar
is written to a temporary sibling and renamed over the old one; photo files are never opened at all. Per-file
problems (photo gone, sidecar not XMP, read-only folder) are counted with a reason and the run goes on.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import threading
import xml.parsers.expat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from pmllm_batch.db import Store
from pmllm_batch.log import get_logger
from pmllm_batch.outputs.bursts import RankingView
from pmllm_batch.outputs.files import replace_file_bytes
from pmllm_batch.outputs.scope import Scope, resolve_scopes
from pmllm_batch.outputs.stars import star_label, stars_by_hash

if TYPE_CHECKING:
    from pmllm_batch.config import Settings

log = get_logger("outputs.xmp")

NS_URI = "http://ns.pmllm-batch.org/xmp/1.0/"  # an identifier, not a web page
NS_PREFIX = "pmllm"
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
)


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
class XmpSummary:
    """What one run did. ``created + updated + unchanged + len(problems) == photos``."""

    profile: str  # whose stars (xmp:Rating); "" when the daemon hook is switched off
    profiles: list[str] = field(default_factory=list)  # whose keywords and scores
    naming: str = "append"
    dry_run: bool = False
    model: str | None = None  # fingerprint of the scores written
    photos: int = 0  # photo files in scope with at least one score
    created: int = 0  # new sidecars (with dry_run: would be created)
    updated: int = 0  # existing sidecars changed
    unchanged: int = 0  # already up to date: not written, not a byte changed
    kept_ratings: int = 0  # of created/updated/unchanged: a user-set rating kept instead of ours
    problems: list[SidecarProblem] = field(default_factory=list)

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
            "unchanged": self.unchanged,
            "kept_ratings": self.kept_ratings,
            "problem_counts": self.problem_counts(),
            "problems": [vars(p) for p in self.problems],
        }


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
        return [f"{KEYWORD_ROOT}|{m.profile}|{star_label(m.stars)}" for m in self.marks]

    def tags_list(self) -> list[str]:
        return [f"{KEYWORD_ROOT}/{m.profile}/{star_label(m.stars)}" for m in self.marks]

    def flat(self) -> list[str]:
        return [f"{FLAT_PREFIX}{m.profile} {star_label(m.stars)}" for m in self.marks]


@dataclass
class MergeResult:
    """The new sidecar bytes (None: nothing to change) and whether a user rating was kept."""

    data: bytes | None
    kept_rating: bool


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


_engine_lock = threading.Lock()
_messages_lock = threading.Lock()  # one capture at a time: the "exiv2" logger is process-wide
_engine_ready = False


class _Exiv2Messages(logging.Handler):
    """Collects libexiv2's messages (python-exiv2 logs them to the "exiv2" logger) while a sidecar is parsed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelno, record.getMessage()))


def _exiv2() -> ModuleType:
    """The ``exiv2`` module, with the XMP toolkit initialised and our namespace registered (once per process)."""
    global _engine_ready
    import exiv2  # python-exiv2 (PyPI "exiv2"); its wheel ships libexiv2

    if not _engine_ready:
        with _engine_lock:
            if not _engine_ready:
                exiv2.XmpParser.initialize()
                exiv2.XmpProperties.registerNs(NS_URI, NS_PREFIX)
                _engine_ready = True
    return exiv2


@contextmanager
def _captured_exiv2_messages() -> Iterator[_Exiv2Messages]:
    # libexiv2 reports a packet it cannot decode only as a log message (and returns no properties); capture them
    # instead of letting them reach the user's terminal, and let the caller decide.
    logger = logging.getLogger("exiv2")
    handler = _Exiv2Messages()
    with _messages_lock:
        propagate = logger.propagate
        logger.addHandler(handler)
        logger.propagate = False
        try:
            yield handler
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate


def parse_sidecar(data: bytes) -> _XmpData:
    """Parse sidecar bytes into an ``exiv2.XmpData``.

    Raises:
        SidecarFormatError: Not well-formed XML, not an XMP packet, or XMP the toolkit cannot decode.
    """
    exiv2 = _exiv2()
    parser = xml.parsers.expat.ParserCreate()
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise SidecarFormatError(f"not well-formed XML ({exc})") from None
    with _captured_exiv2_messages() as messages:
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
    exiv2 = _exiv2()
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
    exiv2 = _exiv2()
    it = xmp.findKey(exiv2.XmpKey(key))
    return None if it == xmp.end() else it


def _erase(xmp: _XmpData, keys: Iterable[str]) -> None:
    for key in list(keys):
        it = _find(xmp, key)
        if it is not None:
            xmp.erase(it)


def _set_array(xmp: _XmpData, key: str, items: Sequence[str], type_name: str) -> None:
    exiv2 = _exiv2()
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

    Args:
        existing: The sidecar's current bytes, or None when there is none.
        content: Stars, keywords and scores for this photo.
        known_profiles: Every stored profile name, so flat keywords of a profile are recognised as ours even when a
            run before wrote no ``pmllm:writtenKeywords`` list.
        overwrite_ratings: Replace ``xmp:Rating`` even when the user changed it.

    Returns:
        New bytes, or ``data=None`` when the merged metadata equals the existing one (then nothing must be written).

    Raises:
        SidecarFormatError: ``existing`` is not XMP.
    """
    exiv2 = _exiv2()
    xmp: _XmpData = parse_sidecar(existing) if existing is not None else exiv2.XmpData()
    before = _snapshot(xmp)

    # Rating: ours only while the sidecar still holds the rating we wrote last time.
    kept = False
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

    # Keywords: drop every one of ours, keep the user's in their order, then add ours.
    flat_ours, _ = _array_items(xmp, K_KEYWORDS)
    ours = set(flat_ours)
    for name in known_profiles:
        ours.update(f"{FLAT_PREFIX}{name} {star_label(s)}" for s in range(1, 6))
    for key, mine, is_ours in (
        (K_HIER, content.hierarchical(), lambda k: k == KEYWORD_ROOT or k.startswith(f"{KEYWORD_ROOT}|")),
        (K_TAGS, content.tags_list(), lambda k: k == KEYWORD_ROOT or k.startswith(f"{KEYWORD_ROOT}/")),
        (K_SUBJECT, content.flat(), lambda k: k in ours or k.startswith(FLAT_PREFIX)),
    ):
        items, type_name = _array_items(xmp, key)
        default_type = "XmpSeq" if key == K_TAGS else "XmpBag"
        kept_items = [k for k in items if not is_ours(k)]
        _set_array(xmp, key, kept_items + mine, type_name or default_type)

    # Our namespace (rating fields above stay as they are).
    keep = (K_LAST_RATING, K_RATING_PROFILE)
    _erase(xmp, [d.key() for d in xmp if d.key().startswith(K_OURS) and d.key() not in keep])
    xmp[K_MODEL] = content.model
    _set_array(xmp, K_KEYWORDS, content.flat(), "XmpBag")
    if content.marks:
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

    if existing is not None and _snapshot(xmp) == before:
        return MergeResult(data=None, kept_rating=kept)
    return MergeResult(data=serialize_sidecar(xmp), kept_rating=kept)


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


def plan_sidecars(
    store: Store,
    profile: str,
    *,
    shares: Sequence[float],
    paths: Sequence[str | os.PathLike[str]] | None = None,
    group: bool = True,
    scope: Scope | None = None,
) -> tuple[dict[str, SidecarContent], list[str], str | None]:
    """What every photo file in scope should carry.

    Stars are computed against each person's whole ranking (current model), so a folder's stars agree with the
    library's; ``paths`` and ``scope`` only limit which files get a sidecar. Every file of a ranked photo gets one
    (exact copies and the RAW twin of a RAW+JPEG pair carry the same verdicts). With ``group`` a person's verdict
    goes to their best photo of each burst / near-duplicate group only (stars over the grouped ranking).

    Returns:
        (photo path -> content, sorted; profile names; model fingerprint or None before any scoring).

    Raises:
        ProfileError: ``profile`` is not stored.
    """
    store.get_profile(profile)  # an unknown name fails here, with the known ones listed
    names = sorted(p.name for p in store.list_profiles())
    current = store.current_model()
    if current is None:
        return {}, names, None
    model = current["fingerprint"]
    view = RankingView(store, group=group)
    marks: dict[str, list[ProfileMark]] = {}
    files: dict[str, tuple[str, ...]] = {}  # content hash -> every file of it
    dates: dict[str, tuple[str | None, int | None]] = {}
    for name in names:
        ranking = view.full(name)
        stars = stars_by_hash(ranking, shares)
        for item in ranking:
            marks.setdefault(item.content_hash, []).append(
                ProfileMark(profile=name, score=item.score, rank=item.rank, stars=stars[item.content_hash])
            )
        for item in store.ranking(name) if group else ranking:
            files.setdefault(item.content_hash, view.files(item))
            dates.setdefault(item.content_hash, (item.taken_at, item.mtime_ns))
    where = scope or Scope()
    if paths:
        where = dataclasses.replace(where, under=tuple([*(resolve_scopes(paths) or []), *(where.under or ())]))
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
) -> XmpSummary:
    """Create or update the XMP sidecar of every scored photo file (in ``paths``, when given).

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

    Returns:
        The counts and every per-file problem with its reason.

    Raises:
        ProfileError: Unknown profile.
    """
    if naming not in NAMINGS:
        raise ValueError(f"unknown sidecar naming {naming!r}; use one of {', '.join(NAMINGS)}")
    plan, names, model = plan_sidecars(store, profile, shares=shares, paths=paths, group=group, scope=scope)
    summary = XmpSummary(profile=profile, profiles=names, naming=naming, dry_run=dry_run, model=model)
    claimed: dict[Path, str] = {}
    for photo, content in plan.items():
        sidecar = sidecar_path(photo, naming)
        if content.cleanup_only and not os.path.lexists(sidecar):
            continue  # a burst member nobody is shown, never written before: nothing to clean up
        if sidecar in claimed and plan[claimed[sidecar]] is content:
            continue  # replace naming: a RAW+JPEG pair (or two copies) shares one sidecar, with one verdict
        summary.photos += 1

        def problem(reason: str, message: str, photo: str = photo, sidecar: Path = sidecar) -> None:
            summary.problems.append(SidecarProblem(path=photo, sidecar=str(sidecar), reason=reason, message=message))

        if sidecar in claimed:
            problem("sidecar_shared", f"{sidecar.name} already belongs to {claimed[sidecar]} (use --naming append)")
            continue
        claimed[sidecar] = photo
        if not os.path.isfile(photo):
            problem("photo_missing", "the photo is no longer on disk (deleted or moved since it was ranked)")
            continue
        existing: bytes | None = None
        existing_st: os.stat_result | None = None
        if os.path.lexists(sidecar):
            if sidecar.is_symlink() or not sidecar.is_file():
                problem("sidecar_not_a_file", f"{sidecar.name} is a folder or a link, not a sidecar file")
                continue
            try:
                existing_st = sidecar.stat()
                existing = sidecar.read_bytes()
            except OSError as exc:
                problem("unreadable_sidecar", f"the sidecar cannot be read ({exc.strerror or exc})")
                continue
        try:
            result = merge_sidecar(existing, content, known_profiles=names, overwrite_ratings=overwrite_ratings)
        except SidecarFormatError as exc:
            problem("corrupt_sidecar", f"the existing sidecar is {exc}; it was left as it is")
            continue
        if result.data is None:
            summary.unchanged += 1
            summary.kept_ratings += result.kept_rating
            continue
        blocked = _write_problem(sidecar.parent, sidecar, existing_st)
        if blocked is not None:
            problem(*blocked)
            continue
        if not dry_run:
            try:
                mode = stat.S_IMODE(existing_st.st_mode) if existing_st is not None else None
                replace_file_bytes(sidecar, result.data, mode=mode)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    problem("read_only_folder", f"the folder {sidecar.parent} cannot be written ({exc.strerror})")
                else:
                    problem("write_failed", f"the sidecar cannot be written ({exc.strerror or exc})")
                continue
        if existing is None:
            summary.created += 1
        else:
            summary.updated += 1
        summary.kept_ratings += result.kept_rating
    for p in summary.problems:
        log.debug("xmp: %s: %s (%s)", p.path, p.reason, p.message)
    return summary


def refresh_sidecars(
    store: Store, settings: Settings, paths: Sequence[str | os.PathLike[str]] | None = None
) -> XmpSummary:
    """Daemon hook: keep sidecars fresh for ``[xmp] profile`` (a no-op returning an empty summary when it is "").

    Uses ``[xmp] naming``, ``overwrite_ratings`` and the star shares. Call it after each scored batch; only sidecars
    whose content changes are written (stars of older photos move when new photos arrive, so pass ``paths=None``
    unless the caller knows better). Paths that no longer exist are skipped as ``photo_missing``.
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
    )
