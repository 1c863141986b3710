"""Ratings in digiKam's core database (``digikam4.db``), read-only (see the package docstring).

The schema, from digiKam's ``core/data/database/dbconfig.xml.cmake.in`` (SQLite, core schema v10+):

* ``AlbumRoots(id, label, status, type, identifier, specificPath)``: one collection. ``identifier`` is a URL:
  ``volumeid:?uuid=<fs uuid>`` (+ ``specificPath`` on that file system), ``volumeid:?label=<fs label>``,
  ``volumeid:?mountpath=<dir>``, ``volumeid:?path=<absolute dir>`` (``specificPath`` then is "/" and ignored) or
  ``networkshareid:?mountpath=<dir>[&mountpath=<dir>...]`` (``CollectionManager``, collectionmanager_p.cpp and
  collectionmanager_location.cpp);
* ``Albums(id, albumRoot, relativePath, ...)``: a folder, ``relativePath`` "/" for the collection's own folder;
* ``Images(id, album, name, status, category, ...)``: a file; ``status`` 1 visible, 2 hidden, 3 trashed,
  4 obsolete (``DatabaseItem::Status``); ``album`` is NULL once the file is gone;
* ``ImageInformation(imageid, rating, ...)``: ``rating`` -1 = no rating (digiKam's default), 0..5 stars;
* the pick label is an internal tag: ``ImageTags(imageid, tagid)`` -> ``Tags(id, pid, name)`` named
  "Pick Label None" / "Pick Label Rejected" / "Pick Label Pending" / "Pick Label Accepted" under the top-level tag
  "_Digikam_Internal_Tags_" (``TagsCache::getOrCreateInternalTag``, ``InternalTagName`` in coredbconstants.cpp).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from pmllm_batch.log import get_logger
from pmllm_batch.ratings._sqlite import DatabaseUnreadable, open_read_only, tables
from pmllm_batch.ratings.model import Rating, ReadResult, map_moved

__all__ = ["parse_identifier", "read_digikam", "resolve_album_root"]

log = get_logger("ratings.digikam")

INTERNAL_TAGS = "_Digikam_Internal_Tags_"
PICK_REJECTED = "Pick Label Rejected"
GONE_STATUSES = (3, 4)  # trashed, obsolete


def parse_identifier(identifier: str) -> tuple[str, dict[str, list[str]]]:
    """``"volumeid:?uuid=ab12&label=x"`` -> ("volumeid", {"uuid": ["ab12"], "label": ["x"]}).

    Percent escapes are decoded; "+" stays "+" (QUrl writes a space as %20).
    """
    scheme, _sep, rest = identifier.partition(":")
    query = rest.split("?", 1)[1] if "?" in rest else ""
    items: dict[str, list[str]] = {}
    for part in query.split("&"):
        if part:
            key, _eq, value = part.partition("=")
            items.setdefault(unquote(key), []).append(unquote(value))
    return scheme.lower(), items


def _unescape_mountinfo(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as \040, \011, \012, \134.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mount_point_of(device_link: Path) -> str | None:
    """Where the file system behind ``/dev/disk/by-uuid/...`` (or by-label) is mounted, on Linux; else None."""
    if not device_link.exists():
        return None
    device = os.path.realpath(device_link)
    try:
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) <= sep + 2 or fields[3] != "/":  # fields[3]: the mount's root within its file system
            continue
        if os.path.realpath(_unescape_mountinfo(fields[sep + 2])) == device:
            return _unescape_mountinfo(fields[4])
    return None


def resolve_album_root(identifier: str, specific_path: str | None) -> Path | None:
    """The folder of a digiKam collection on this machine, as digiKam finds it; None when it cannot be found."""
    scheme, items = parse_identifier(identifier)
    specific = specific_path or "/"

    def under(mount: str) -> Path:
        return Path(mount.rstrip("/") + "/" + specific.lstrip("/")) if specific.strip("/") else Path(mount)

    if scheme == "networkshareid":
        mounts = items.get("mountpath", [])
        for mount in mounts:
            if os.path.isdir(mount):
                return Path(mount)
        return Path(mounts[0]) if mounts else None
    if scheme != "volumeid":
        return None
    if "uuid" in items:
        uuid = items["uuid"][0]
        for candidate in (uuid, uuid.lower(), uuid.upper()):
            found = _mount_point_of(Path("/dev/disk/by-uuid") / candidate)
            if found:
                return under(found)
    elif "label" in items:
        found = _mount_point_of(Path("/dev/disk/by-label") / items["label"][0])
        if found:
            return under(found)
    elif "mountpath" in items:
        return under(items["mountpath"][0])
    if "path" in items:  # the absolute folder itself; specificPath is "/" by convention and ignored
        return Path(items["path"][0])
    return None


def read_digikam(
    digikam4_db: Path | str,
    *,
    roots: Mapping[int, Path] | None = None,
    moved: Mapping[str, Path] | None = None,
) -> ReadResult:
    """The person's ratings in digiKam's ``digikam4.db``, opened read-only (digiKam may be running).

    Args:
        digikam4_db: digiKam's core database (in the folder chosen at digiKam's first start).
        roots: ``AlbumRoots.id`` -> its folder on this machine, for collections digiKam identifies by a volume
            this machine cannot find (a disk that is not mounted, a database copied from another computer).
        moved: Folder prefixes (after resolving the collections) -> where they are on this machine.

    Returns:
        ``ImageInformation.rating`` 1..5 as stars, the pick label "Rejected" as -1 (whatever the stars); -1 (no
        rating), 0 and NULL are unrated; trashed and obsolete entries are ignored (a note counts them). Paths are
        not checked on disk.
    """
    db = Path(digikam4_db)
    result = ReadResult()
    try:
        conn = open_read_only(db)
    except DatabaseUnreadable as exc:
        result.skip(db, "unreadable_database", f"the digiKam database cannot be opened ({exc})")
        return result
    try:
        _read(conn, db, result, dict(roots or {}), dict(moved or {}))
    except sqlite3.Error as exc:
        result.skip(db, "unreadable_database", f"the digiKam database cannot be read ({exc})")
    finally:
        conn.close()
    return result


def _read(
    conn: sqlite3.Connection, db: Path, result: ReadResult, roots: dict[int, Path], moved: dict[str, Path]
) -> None:
    have = tables(conn)
    if not {"albumroots", "albums", "images", "imageinformation"} <= have:
        result.skip(db, "not_a_digikam_database", "the database has no digiKam AlbumRoots / Albums / Images tables")
        return
    root_rows = conn.execute("SELECT id, identifier, specificPath FROM AlbumRoots").fetchall()
    root_dirs: dict[int, Path | None] = {}
    root_names: dict[int, str] = {}
    for root_id, identifier, specific in root_rows:
        root_names[int(root_id)] = f"{identifier}{specific or ''}"
        root_dirs[int(root_id)] = roots.get(int(root_id)) or resolve_album_root(str(identifier or ""), specific)
    rejected: set[int] = set()
    if {"imagetags", "tags"} <= have:
        rejected = {
            int(r[0])
            for r in conn.execute(
                "SELECT it.imageid FROM ImageTags it JOIN Tags t ON t.id = it.tagid JOIN Tags p ON p.id = t.pid "
                "WHERE p.name = ? AND t.name = ?",
                (INTERNAL_TAGS, PICK_REJECTED),
            )
        }
    rows = conn.execute(
        "SELECT i.id, i.name, i.status, a.albumRoot, a.relativePath, ii.rating FROM Images i "
        "LEFT JOIN Albums a ON a.id = i.album LEFT JOIN ImageInformation ii ON ii.imageid = i.id ORDER BY i.id"
    ).fetchall()
    gone = 0
    unresolved: dict[int, int] = {}
    for image_id, name, status, root_id, relative, rating in rows:
        if root_id is None or status in GONE_STATUSES:
            gone += 1
            continue
        if image_id in rejected:
            stars = -1
        elif rating is None or rating in (-1, 0):
            result.unrated += 1
            continue
        else:
            stars = int(rating)
        rel = str(relative or "/").strip("/")
        root = root_dirs.get(int(root_id))
        if root is None:
            where = PurePosixPath(root_names.get(int(root_id), "?"), rel, str(name))
            result.skip(Path(str(where)), "album_root_unknown",
                        f"digiKam image id {image_id}: the collection {root_names.get(int(root_id), root_id)!r} "
                        f"(AlbumRoots id {root_id}) is not on this machine; pass roots={{{root_id}: folder}}")
            unresolved[int(root_id)] = unresolved.get(int(root_id), 0) + 1
            continue
        path = map_moved(str(root / rel / str(name)) if rel else str(root / str(name)), moved)
        if not (stars == -1 or 1 <= stars <= 5):
            result.skip(path, "bad_rating", f"digiKam image id {image_id} has rating {rating}, not -1..5")
            continue
        result.ratings.append(Rating(path, stars, "digikam", f"{db.name} image id {image_id}"))
    if gone:
        result.notes.append(f"{db}: {gone} trashed or removed entr{'y' if gone == 1 else 'ies'} ignored")
    for root_id, count in sorted(unresolved.items()):
        result.notes.append(
            f"{db}: collection {root_names[root_id]!r} (AlbumRoots id {root_id}) not found on this machine; "
            f"{count} rated photo(s) skipped"
        )
