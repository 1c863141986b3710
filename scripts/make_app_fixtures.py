#!/usr/bin/env python3
"""Helpers of scripts/make_app_fixtures.sh (run that script, not this file).

Subcommands:
  photos DIR NAME=RATING...   tiny JPEGs DIR/NAME.jpg (PIL); RATING "-" = no sidecar, else DIR/NAME.jpg.xmp with
                              xmp:Rating=RATING (the sidecar another app left before darktable imports the folder)
  shrink SRC DST              copy an SQLite database, VACUUM it with 1 KiB pages; schema and every row kept
  evidence WORK OUT LUALOG    what darktable wrote for the import-default experiment, as text
  digikam DB                  the digiKam fixture: digiKam's own CREATE TABLE statements, a few rated photos
"""

from __future__ import annotations

import difflib
import re
import shutil
import sqlite3
import sys
from pathlib import Path

SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="{rating}"/>
 </rdf:RDF>
</x:xmpmeta>
"""


def photos(folder: Path, specs: list[str]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(specs):
        name, _eq, rating = spec.partition("=")
        Image.new("RGB", (16, 12), (40 * i % 256, 100, (200 - 40 * i) % 256)).save(folder / f"{name}.jpg", quality=85)
        if rating and rating != "-":
            (folder / f"{name}.jpg.xmp").write_text(SIDECAR.format(rating=rating), encoding="utf-8")


def _counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        conn.close()


def shrink(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    conn = sqlite3.connect(dst)
    try:
        conn.execute("PRAGMA page_size = 1024")
        conn.execute("VACUUM")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    if _counts(src) != _counts(dst):
        raise SystemExit(f"shrink changed the rows of {src}")
    print(f"{dst.name}: {src.stat().st_size} -> {dst.stat().st_size} bytes, every table's rows kept")


def evidence(work: Path, out: Path, lua_log: Path) -> None:
    db = work / "config" / "library.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT i.id, i.filename, i.flags, i.flags & 7, (i.flags & 8) != 0, i.import_timestamp, i.change_timestamp, "
        "i.write_timestamp FROM images i ORDER BY i.filename"
    ).fetchall()
    conn.close()
    rc = (work / "config" / "darktablerc").read_text(encoding="utf-8").splitlines()
    lines = [
        "darktable's import default: what darktable wrote (made by scripts/make_app_fixtures.sh; not a test input)",
        "",
        "Photos imported together into a fresh library, then one rating changed inside darktable over D-Bus/Lua:",
        "  d.jpg  no sidecar before import            -> darktable's initial import rating",
        "  e.jpg  sidecar xmp:Rating=\"1\" before import -> 1 set by the person (in another app)",
        "  b.jpg  sidecar xmp:Rating=\"2\" before import, then set to 1 inside darktable (Lua: image.rating = 1)",
        "  f.jpg  sidecar xmp:Rating=\"0\" before import",
        "",
        "darktablerc after the run:",
        *[f"  {line}" for line in rc if line.startswith(("ui_last/import_initial_rating", "write_sidecar_files"))],
        "",
        "Lua session (ratings as darktable reports them):",
        *[f"  {line}" for line in lua_log.read_text(encoding="utf-8").splitlines()],
        "",
        "library.db images (id, filename, flags, flags&7, reject bit, import_timestamp, change_timestamp, "
        "write_timestamp):",
        *[f"  {r}" for r in rows],
        "",
    ]
    # Sidecars compared with d.jpg.xmp after blanking what must differ (file name, timestamps, iop order version).
    def normal(name: str) -> list[str]:
        text = (work / "photos" / f"{name}.jpg.xmp").read_text(encoding="utf-8")
        text = re.sub(r'(timestamp|DateTimeOriginal)="[^"]*"', r'\1="…"', text)
        text = re.sub(r'DerivedFrom="[^"]*"', 'DerivedFrom="…"', text)
        return text.splitlines(keepends=True)

    for name in ("e", "b", "f"):
        diff = list(difflib.unified_diff(normal("d"), normal(name), "d.jpg.xmp", f"{name}.jpg.xmp", n=0))
        lines.append(f"{name}.jpg.xmp vs d.jpg.xmp (timestamps and file names blanked): "
                     + ("identical" if not diff else "differs"))
        lines += [f"  {d.rstrip()}" for d in diff]
    lines += ["", "d.jpg.xmp as darktable wrote it:", *[f"  {t.rstrip()}" for t in
                                                       (work / "photos" / "d.jpg.xmp").read_text().splitlines()]]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


# digiKam's SQLite core schema, copied from core/data/database/dbconfig.xml.cmake.in (KDE/digikam, "CreateDB"):
# the tables read_digikam reads, plus Settings (the schema version) and TagProperties / TagsTree (internal tags).
DIGIKAM_SCHEMA = """
CREATE TABLE AlbumRoots
    (id INTEGER PRIMARY KEY,
    label TEXT,
    status INTEGER NOT NULL,
    type INTEGER NOT NULL,
    identifier TEXT,
    specificPath TEXT,
    UNIQUE(identifier, specificPath));
CREATE TABLE Albums
    (id INTEGER PRIMARY KEY,
    albumRoot INTEGER NOT NULL,
    relativePath TEXT NOT NULL,
    date DATE,
    caption TEXT,
    collection TEXT,
    icon INTEGER,
    UNIQUE(albumRoot, relativePath));
CREATE TABLE Images
    (id INTEGER PRIMARY KEY,
    album INTEGER,
    name TEXT NOT NULL,
    status INTEGER NOT NULL,
    category INTEGER NOT NULL,
    modificationDate DATETIME,
    fileSize INTEGER,
    uniqueHash TEXT,
    manualOrder INTEGER,
    UNIQUE (album, name));
CREATE TABLE ImageInformation
    (imageid INTEGER PRIMARY KEY,
    rating INTEGER,
    creationDate DATETIME,
    digitizationDate DATETIME,
    orientation INTEGER,
    width INTEGER,
    height INTEGER,
    format TEXT,
    colorDepth INTEGER,
    colorModel INTEGER);
CREATE TABLE IF NOT EXISTS Tags
    (id INTEGER PRIMARY KEY,
    pid INTEGER,
    name TEXT NOT NULL,
    icon INTEGER,
    iconkde TEXT,
    UNIQUE (name, pid));
CREATE TABLE IF NOT EXISTS TagsTree
    (id INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    UNIQUE (id, pid));
CREATE TABLE IF NOT EXISTS ImageTags
    (imageid INTEGER NOT NULL,
    tagid INTEGER NOT NULL,
    UNIQUE (imageid, tagid));
CREATE TABLE IF NOT EXISTS Settings
    (keyword TEXT NOT NULL UNIQUE,
    value TEXT);
CREATE TABLE TagProperties
    (tagid INTEGER,
    property TEXT,
    value TEXT);
CREATE INDEX dir_index  ON Images (album);
CREATE INDEX tag_index  ON ImageTags (tagid);
CREATE INDEX tag_id_index  ON ImageTags (imageid);
"""

# (id, album, name, status, rating or None for no ImageInformation row, pick label tag or None)
DIGIKAM_IMAGES = [
    (1, 1, "sunset.jpg", 1, 5, None),  # 5 stars, collection folder itself
    (2, 2, "beach.jpg", 1, 3, "Pick Label Accepted"),  # 3 stars; "accepted" carries no stars
    (3, 2, "blurry.jpg", 1, 2, "Pick Label Rejected"),  # rejected wins over its 2 stars -> -1
    (4, 2, "plain.jpg", 1, -1, None),  # digiKam's "no rating" -> unrated
    (5, 2, "zero.jpg", 1, 0, "Pick Label Pending"),  # 0 stars -> unrated
    (6, 2, "noinfo.jpg", 1, None, None),  # no ImageInformation row -> unrated
    (7, 2, "trashed.jpg", 3, 4, None),  # status 3 (trashed) -> ignored
    (8, None, "gone.jpg", 4, 4, None),  # album NULL, status 4 (obsolete) -> ignored
    (9, 3, "IMG_0001.JPG", 1, 4, None),  # on a volume (uuid) this machine does not have -> album_root_unknown
    (10, 1, "bad.jpg", 1, 9, None),  # not -1..5 -> bad_rating
    (11, 1, "reject-only.jpg", 1, -1, "Pick Label Rejected"),  # rejected without stars -> -1
    (12, 4, "shared.jpg", 2, 4, None),  # hidden (status 2) still counts; percent-encoded path identifier
    (13, 2, "one-star.jpg", 1, 1, None),  # 1 star is a verdict in digiKam (no import default)
]


def digikam(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    if db.exists():
        db.unlink()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA page_size = 1024")
    conn.executescript(DIGIKAM_SCHEMA)
    conn.executemany("INSERT INTO Settings VALUES (?, ?)", [("DBVersion", "10"), ("DBVersionRequired", "10")])
    conn.executemany(
        "INSERT INTO AlbumRoots VALUES (?, ?, ?, ?, ?, ?)",
        [
            (1, "Pictures", 0, 1, "volumeid:?path=/home/anna/Pictures", "/"),
            (2, "Card", 0, 2, "volumeid:?uuid=0badc0de-0000-4000-8000-00000000dead", "/DCIM"),
            (3, "Shared", 0, 1, "volumeid:?path=%2Fsrv%2Fphotos%20shared%2Bold", "/"),
        ],
    )
    conn.executemany(
        "INSERT INTO Albums (id, albumRoot, relativePath) VALUES (?, ?, ?)",
        [(1, 1, "/"), (2, 1, "/2024/Holiday"), (3, 2, "/100CANON"), (4, 3, "/")],
    )
    tags = [(1, 0, "_Digikam_Internal_Tags_")] + [
        (2 + i, 1, f"Pick Label {n}") for i, n in enumerate(("None", "Rejected", "Pending", "Accepted"))
    ] + [(6, 0, "Holiday")]
    conn.executemany("INSERT INTO Tags (id, pid, name) VALUES (?, ?, ?)", tags)
    conn.executemany("INSERT INTO TagsTree VALUES (?, ?)", [(t[0], t[1]) for t in tags])
    conn.executemany("INSERT INTO TagProperties VALUES (?, 'internalTag', NULL)", [(t[0],) for t in tags[:5]])
    tag_ids = {name: tid for tid, _pid, name in tags}
    for image_id, album, name, status, rating, pick in DIGIKAM_IMAGES:
        conn.execute("INSERT INTO Images (id, album, name, status, category) VALUES (?, ?, ?, ?, 1)",
                     (image_id, album, name, status))
        if rating is not None:
            conn.execute("INSERT INTO ImageInformation (imageid, rating) VALUES (?, ?)", (image_id, rating))
        if pick:
            conn.execute("INSERT INTO ImageTags VALUES (?, ?)", (image_id, tag_ids[pick]))
    conn.execute("INSERT INTO ImageTags VALUES (13, 6)")  # an ordinary tag, not a pick label
    conn.commit()
    conn.execute("VACUUM")
    conn.close()
    print(f"{db}: {db.stat().st_size} bytes")


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "photos":
        photos(Path(args[0]), args[1:])
    elif cmd == "shrink":
        shrink(Path(args[0]), Path(args[1]))
    elif cmd == "evidence":
        evidence(Path(args[0]), Path(args[1]), Path(args[2]))
    elif cmd == "digikam":
        digikam(Path(args[0]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
