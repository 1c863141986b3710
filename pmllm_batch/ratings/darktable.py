"""Ratings in darktable's library database (``library.db``), read-only (see the package docstring)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

from pmllm_batch.log import get_logger
from pmllm_batch.ratings._sqlite import DatabaseUnreadable, columns, open_read_only, tables
from pmllm_batch.ratings.model import Rating, ReadResult, map_moved
from pmllm_batch.ratings.xmp import DARKTABLE_DEFAULT, stars_label

__all__ = ["decode_flags", "initial_rating_from_rc", "read_darktable"]

log = get_logger("ratings.darktable")

RATINGS_MASK = 0x7  # DT_VIEW_RATINGS_MASK: stars 0..5 in images.flags
REJECTED_BIT = 0x8  # DT_IMAGE_REJECTED (darktable >= 3.0)
OLD_REJECT = 6  # DT_VIEW_REJECT: before 3.0 a reject was stored as "6 stars"
RC_KEY = "ui_last/import_initial_rating"


def decode_flags(flags: int) -> int | None:
    """``images.flags`` -> -1 (rejected), 0..5 stars, or None for a value darktable never writes (7 stars)."""
    stars = flags & RATINGS_MASK
    if flags & REJECTED_BIT or stars == OLD_REJECT:
        return -1
    return stars if stars <= 5 else None


def initial_rating_from_rc(rc: Path) -> int | None:
    """darktable's initial import rating from a ``darktablerc`` (None: no such file or no valid entry)."""
    try:
        text = rc.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == RC_KEY:
            try:
                rating = int(value.strip())
            except ValueError:
                return None
            return rating if 0 <= rating <= 5 else None
    return None


def read_darktable(
    library_db: Path | str,
    *,
    darktable_default: int | None = None,
    moved: Mapping[str, Path] | None = None,
) -> ReadResult:
    """The person's ratings in darktable's ``library.db``, opened read-only (darktable may be running).

    Args:
        library_db: darktable's library (``~/.config/darktable/library.db`` by default).
        darktable_default: darktable's initial import rating; a photo at exactly this rating is no verdict (0
            switches the rule off). None: ``ui_last/import_initial_rating`` of the ``darktablerc`` beside the
            library, else darktable's factory default of 1.
        moved: Folder prefixes stored in the library -> where they are on this machine.

    Returns:
        One rating per photo file (its original, version 0, when darktable holds duplicates of it); paths are
        ``film_rolls.folder + "/" + images.filename`` as stored (after ``moved``), not checked on disk.
    """
    db = Path(library_db)
    result = ReadResult()
    try:
        conn = open_read_only(db)
    except DatabaseUnreadable as exc:
        result.skip(db, "unreadable_database", f"the darktable library cannot be opened ({exc})")
        return result
    try:
        _read(conn, db, result, darktable_default, dict(moved or {}))
    except sqlite3.Error as exc:
        result.skip(db, "unreadable_database", f"the darktable library cannot be read ({exc})")
    finally:
        conn.close()
    return result


def _read(
    conn: sqlite3.Connection, db: Path, result: ReadResult, default: int | None, moved: dict[str, Path]
) -> None:
    if not {"images", "film_rolls"} <= tables(conn) or not {"id", "film_id", "filename", "flags"} <= columns(
        conn, "images"
    ):
        result.skip(db, "not_a_darktable_library", "the database has no darktable images / film_rolls tables")
        return
    if default is None:
        rc = db.parent / "darktablerc"
        found = initial_rating_from_rc(rc)
        default = found if found is not None else DARKTABLE_DEFAULT
        origin = f"{RC_KEY} in {rc}" if found is not None else "darktable's factory default; no darktablerc beside it"
        result.notes.append(f"{db}: darktable's import default taken as {default} star(s) ({origin})")
    version = "COALESCE(i.version, 0)" if "version" in columns(conn, "images") else "0"
    rows = conn.execute(
        f"SELECT i.id, f.folder, i.filename, i.flags, {version} AS v FROM images i "
        "JOIN film_rolls f ON f.id = i.film_id ORDER BY f.folder, i.filename, v, i.id"
    ).fetchall()
    # darktable's duplicates ("versions") of one file are several rows: the original (lowest version) counts.
    photos: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    for image_id, folder, filename, flags, v in rows:
        photos.setdefault((str(folder), str(filename)), []).append((int(image_id), int(flags or 0), int(v)))
    for (folder, filename), versions in photos.items():
        path = map_moved(f"{folder.rstrip('/')}/{filename}", moved)
        image_id, flags, _v = versions[0]
        stars = decode_flags(flags)
        if stars is None:
            result.skip(path, "bad_rating", f"darktable image id {image_id} has flags {flags} (7 stars)")
            continue
        others = {decode_flags(f) for _i, f, _ in versions[1:]} - {stars}
        if others:
            result.notes.append(
                f"{path}: darktable holds {len(versions)} versions with different ratings; the original's "
                f"({stars_label(stars)}, image id {image_id}) counts"
            )
        if stars == 0:
            result.unrated += 1
        elif stars == default and default > 0:
            result.unrated += 1
            result.import_defaults += 1
        else:
            result.ratings.append(Rating(path, stars, "darktable", f"{db.name} image id {image_id}"))
    if result.import_defaults:
        result.notes.append(
            f"{result.import_defaults} photo(s) at darktable's import default of {default} star(s) counted as unrated"
        )
