"""Ratings in XMP: sidecars in both namings and XMP embedded in the photo file (see the package docstring)."""

from __future__ import annotations

import logging
import math
import os
import xml.parsers.expat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pmllm_batch.log import get_logger
from pmllm_batch.ratings.model import Rating, ReadResult
from pmllm_batch.xmp_engine import NS_PREFIX, NS_URI, captured_exiv2_messages, exiv2_module

__all__ = [
    "DARKTABLE_DEFAULT",
    "NS_PREFIX",
    "NS_URI",
    "XmpFormatError",
    "XmpVerdict",
    "judge_packet",
    "parse_xmp",
    "read_xmp",
    "sidecar_candidates",
    "stars_label",
]

log = get_logger("ratings.xmp")

# Our namespace (NS_URI, NS_PREFIX) and the exiv2 engine come from pmllm_batch.xmp_engine, shared with the writer.

K_RATING = "Xmp.xmp.Rating"
K_WRITTEN = f"Xmp.{NS_PREFIX}.writtenRating"  # the last xmp:Rating we wrote (outputs.xmp)
K_PICK = "Xmp.digiKam.PickLabel"  # digiKam: 0 none, 1 rejected, 2 pending, 3 accepted
DARKTABLE_KEYS = "Xmp.darktable."  # any property of darktable's namespace (http://darktable.sf.net/)

# darktable's "initial import rating" (preference ui_last/import_initial_rating, default 1): the stars darktable
# gives every photo it imports without a rating. See the package docstring, "darktable's import default".
DARKTABLE_DEFAULT = 1

PICK_REJECTED = 1


class XmpFormatError(Exception):
    """Bytes that are not an XMP packet; ``str(exc)`` says why."""


@dataclass(frozen=True)
class XmpVerdict:
    """What one XMP packet says about the person's rating.

    kind: "verdict" (``stars`` is -1 or 1..5), "unrated" (no rating or 0), "ours" (xmp:Rating equals our
    pmllm:writtenRating), "default" (a darktable sidecar at darktable's import default) or "bad" (``message`` says
    why the value cannot be used).
    """

    kind: str
    stars: int | None = None
    message: str = ""


# ---------------------------------------------------------------------------------------------------------------------
# The exiv2 engine (the same library and calls as pmllm_batch.outputs.xmp, which this layer may not import)
# ---------------------------------------------------------------------------------------------------------------------



class _XmpDatum(Protocol):
    """What is used of an ``exiv2.Xmpdatum`` (python-exiv2 ships no types)."""

    def key(self) -> str: ...

    def toString(self) -> str: ...  # exiv2's name


def _wanted(xmp_data: Iterable[_XmpDatum]) -> dict[str, str]:
    """The properties a verdict depends on; a darktable property is recorded as ``Xmp.darktable.`` once."""
    props: dict[str, str] = {}
    for datum in xmp_data:
        key = datum.key()
        if key in (K_RATING, K_WRITTEN, K_PICK):
            props[key] = datum.toString()
        elif key.startswith(DARKTABLE_KEYS):
            props[DARKTABLE_KEYS] = "1"
    return props


def parse_xmp(data: bytes) -> dict[str, str]:
    """Parse sidecar bytes; return ``xmp:Rating``, ``pmllm:writtenRating`` and ``digiKam:PickLabel`` by exiv2 key
    (those present), and the key ``"Xmp.darktable."`` when the packet carries darktable's namespace.

    Raises:
        XmpFormatError: Not well-formed XML, not an XMP packet, or XMP the toolkit cannot decode.
    """
    exiv2 = exiv2_module()
    parser = xml.parsers.expat.ParserCreate()
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise XmpFormatError(f"not well-formed XML ({exc})") from None
    with captured_exiv2_messages() as messages:
        try:
            image = exiv2.ImageFactory.open(data)
            if image.imageType() != exiv2.ImageType.xmp:
                raise XmpFormatError("not an XMP packet")
            image.readMetadata()
        except exiv2.Exiv2Error as exc:
            raise XmpFormatError(f"not an XMP packet ({exc.message})") from None
        props = _wanted(image.xmpData())
    for level, text in messages.messages:
        if level >= logging.ERROR or "Failed to decode" in text:
            raise XmpFormatError(f"XMP that cannot be decoded ({text})")
        log.debug("exiv2: %s", text)
    return props


class _PhotoUnreadable(Exception):
    pass


def _read_embedded(photo: Path) -> dict[str, str]:
    """The wanted properties of the XMP embedded in a photo file ({} when it has none).

    Raises:
        _PhotoUnreadable: exiv2 cannot read the file's metadata (unknown type, corrupt file, I/O error).
    """
    exiv2 = exiv2_module()
    with captured_exiv2_messages() as messages:
        try:
            image = exiv2.ImageFactory.open(str(photo))
            image.readMetadata()
        except exiv2.Exiv2Error as exc:
            raise _PhotoUnreadable(exc.message) from None
        except OSError as exc:
            raise _PhotoUnreadable(exc.strerror or str(exc)) from None
        props = _wanted(image.xmpData())
    for _level, text in messages.messages:
        log.debug("exiv2 (%s): %s", photo.name, text)
    return props


# ---------------------------------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------------------------------


def _whole(text: str) -> int | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value != int(value):
        return None
    return int(value)


def stars_label(stars: int) -> str:
    """-1 -> "rejected", 1 -> "1 star", 3 -> "3 stars"."""
    return "rejected" if stars == -1 else f"{stars} star" + ("" if stars == 1 else "s")


def judge_packet(props: dict[str, str], *, darktable_default: int = DARKTABLE_DEFAULT) -> XmpVerdict:
    """The person's verdict in one packet's properties (as returned by :func:`parse_xmp`).

    Order: ``digiKam:PickLabel`` 1 (rejected) -> -1, whatever the stars; no ``xmp:Rating`` or 0 -> unrated;
    ``xmp:Rating`` equal to ``pmllm:writtenRating`` -> ours; a darktable packet whose rating equals
    ``darktable_default`` (0 switches that rule off) -> default; -1 -> rejected; 1..5 -> stars.
    """
    pick = _whole(props.get(K_PICK, ""))
    if pick == PICK_REJECTED:
        return XmpVerdict("verdict", -1)
    text = props.get(K_RATING)
    if text is None or not text.strip():
        return XmpVerdict("unrated")
    stars = _whole(text)
    if stars is None or not -1 <= stars <= 5:
        return XmpVerdict("bad", message=f"xmp:Rating is {text.strip()!r}, not a whole number in -1..5")
    if stars == 0:
        return XmpVerdict("unrated")
    written = props.get(K_WRITTEN)
    if written is not None and _whole(written) == stars:
        return XmpVerdict("ours", stars)
    if DARKTABLE_KEYS in props and darktable_default > 0 and stars == darktable_default:
        return XmpVerdict("default", stars)
    return XmpVerdict("verdict", stars)


def sidecar_candidates(photo: Path) -> list[tuple[Path, str]]:
    """The sidecar names a photo can have, with their naming: ``photo.jpg.xmp`` ("append": darktable, digiKam) first,
    then ``photo.xmp`` ("replace": Lightroom, Bridge, Capture One); each also with ``.XMP``."""
    names: list[tuple[Path, str]] = [(photo.with_name(photo.name + ext), "append") for ext in (".xmp", ".XMP")]
    if photo.suffix:
        names += [(photo.with_name(photo.stem + ext), "replace") for ext in (".xmp", ".XMP")]
    seen: set[Path] = set()
    out: list[tuple[Path, str]] = []
    for path, naming in names:
        if path not in seen and path != photo:
            seen.add(path)
            out.append((path, naming))
    return out


@dataclass
class _Sidecar:
    path: Path
    naming: str
    mtime_ns: int
    verdict: XmpVerdict


class _SkipPhoto(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _existing_sidecars(photo: Path) -> list[tuple[Path, str, os.stat_result]]:
    found: list[tuple[Path, str, os.stat_result]] = []
    for path, naming in sidecar_candidates(photo):
        if not os.path.lexists(path):
            continue
        if not path.is_file():
            raise _SkipPhoto("sidecar_not_a_file", f"{path.name} is a folder or another non-file, not a sidecar")
        try:
            st = path.stat()
        except OSError as exc:
            raise _SkipPhoto("unreadable_sidecar", f"{path.name} cannot be read ({exc.strerror or exc})") from None
        # A case-insensitive file system answers photo.jpg.XMP for photo.jpg.xmp: the same file, read once.
        if any(os.path.samestat(st, other) for _p, _n, other in found):
            continue
        found.append((path, naming, st))
    return found


def _read_sidecars(photo: Path, darktable_default: int) -> list[_Sidecar]:
    sidecars: list[_Sidecar] = []
    for path, naming, st in _existing_sidecars(photo):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _SkipPhoto("unreadable_sidecar", f"{path.name} cannot be read ({exc.strerror or exc})") from None
        try:
            props = parse_xmp(data)
        except XmpFormatError as exc:
            raise _SkipPhoto("corrupt_sidecar", f"{path.name} is {exc}") from None
        verdict = judge_packet(props, darktable_default=darktable_default)
        if verdict.kind == "bad":
            raise _SkipPhoto("bad_rating", f"{path.name}: {verdict.message}")
        sidecars.append(_Sidecar(path=path, naming=naming, mtime_ns=st.st_mtime_ns, verdict=verdict))
    return sidecars


def _pick(photo: Path, verdicts: list[_Sidecar], notes: list[str]) -> _Sidecar:
    """The sidecar whose verdict counts: the one modified last; on a tie the "append" naming (photo.jpg.xmp)."""
    ordered = sorted(verdicts, key=lambda s: (s.mtime_ns, s.naming == "append"), reverse=True)
    winner = ordered[0]
    losers = [s for s in ordered[1:] if s.verdict.stars != winner.verdict.stars]
    for loser in losers:
        why = (
            "it was modified last"
            if winner.mtime_ns != loser.mtime_ns
            else "both were modified at the same time and the photo.jpg.xmp naming wins a tie"
        )
        notes.append(
            f"{photo}: {winner.path.name} says {stars_label(winner.verdict.stars or 0)} and {loser.path.name} says "
            f"{stars_label(loser.verdict.stars or 0)}; {winner.path.name} wins because {why}"
        )
    return winner


def read_xmp(
    photos: Iterable[Path | str], *, embedded: bool = True, darktable_default: int = DARKTABLE_DEFAULT
) -> ReadResult:
    """The person's ratings in the XMP of each photo: its sidecars (``photo.jpg.xmp`` and ``photo.xmp``), else the
    XMP embedded in the photo file.

    Args:
        photos: Photo files (a path given twice is read once).
        embedded: Also read XMP embedded in photo files (only for photos whose sidecars hold no verdict).
        darktable_default: darktable's initial import rating (``ui_last/import_initial_rating`` in darktablerc);
            a darktable-written sidecar at exactly this rating is no verdict. 0 switches the rule off.

    Returns:
        Each photo lands in exactly one of ``ratings``, ``skipped`` or ``unrated``.
    """
    result = ReadResult()
    seen: set[Path] = set()
    for item in photos:
        photo = Path(item)
        if photo in seen:
            continue
        seen.add(photo)
        if not photo.is_file():
            result.skip(photo, "photo_missing", "the photo is not on disk (or is not a file)")
            continue
        try:
            sidecars = _read_sidecars(photo, darktable_default)
        except _SkipPhoto as exc:
            result.skip(photo, exc.reason, exc.message)
            continue
        with_verdict = [s for s in sidecars if s.verdict.kind == "verdict"]
        kinds = {s.verdict.kind for s in sidecars}
        if with_verdict:
            winner = _pick(photo, with_verdict, result.notes)
            assert winner.verdict.stars is not None
            result.ratings.append(Rating(photo, winner.verdict.stars, "xmp-sidecar", str(winner.path)))
            continue
        if embedded:
            try:
                verdict = judge_packet(_read_embedded(photo), darktable_default=darktable_default)
            except _PhotoUnreadable as exc:
                result.skip(photo, "unreadable_photo", f"no sidecar holds a rating and the photo's metadata "
                                                       f"cannot be read ({exc})")
                continue
            if verdict.kind == "bad":
                result.skip(photo, "bad_rating", f"embedded XMP: {verdict.message}")
                continue
            if verdict.kind == "verdict":
                assert verdict.stars is not None
                result.ratings.append(Rating(photo, verdict.stars, "xmp-embedded", "embedded XMP"))
                continue
            kinds.add(verdict.kind)
        result.unrated += 1
        result.written_by_us += "ours" in kinds
        result.import_defaults += "default" in kinds
    if result.import_defaults:
        result.notes.append(
            f"{result.import_defaults} photo(s) whose darktable sidecar holds darktable's import default of "
            f"{darktable_default} star(s) counted as unrated (darktable writes it for every photo it imports)"
        )
    return result
