"""``pmllm-batch rate --profile NAME (--stars N PATH... | --from-xmp [PATH...] | --from-csv FILE |
--from-darktable LIBRARY.db | --from-digikam digikam4.db)``: store the stars a person set, as their verdicts.

The readers (:mod:`pmllm_batch.ratings`, whose docstring holds every rule: which of two sidecars wins, darktable's
import default, digiKam's pick label, what is ours) open everything read-only; :func:`pmllm_batch.scorer.rated.
store_ratings` keys what they found by content hash, so a rating follows its photo through moves and renames. Nothing
is written to photo folders, sidecars or the apps' databases.

* ``--stars N PATH...``: -1 rejected, 1..5 stars, 0 clears the stored rating. A PATH must be a photo file the
  library holds or one on disk (a folder or a path that is neither is a mistake: exit 2, nothing stored).
* ``--from-xmp [PATH...]``: the XMP of the photos under each folder, found by the scanner's own walk and ``[scan]``
  rules (so photos not ranked yet count too), or of each photo file given; with no PATH, of every ok photo in the
  library.
* ``--from-csv FILE``, ``--from-darktable LIBRARY.db``, ``--from-digikam digikam4.db``: a missing file, or one that
  is not what it should be, is one sentence and exit 2. ``--moved OLD=NEW`` rewrites folders an app's database
  stored; ``--digikam-root ID=FOLDER`` places a digiKam collection this machine cannot find by its volume;
  ``--darktable-default N`` overrides darktable's initial import rating (a rating equal to it is no verdict).

A photo, sidecar or row that cannot be read is skipped with its reason and the run goes on (exit 0).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pmllm_batch.config import Settings
from pmllm_batch.errors import UserError

from . import plural, print_json

if TYPE_CHECKING:  # imported in run: building the parser stays cheap (start-up time, issue 24)
    from pmllm_batch.db import Store
    from pmllm_batch.ratings import ReadResult
    from pmllm_batch.scorer.rated import RateReport

# The source options, by the name ``--json`` reports under "from".
SOURCES = {"stars": "--stars", "xmp": "--from-xmp", "csv": "--from-csv", "darktable": "--from-darktable",
           "digikam": "--from-digikam"}
# Skip reasons that mean the whole source file (CSV, app database) could not be used: a mistake, not a skipped row.
SOURCE_UNUSABLE = ("unreadable_file", "unreadable_database", "not_a_darktable_library", "not_a_digikam_database")
MAX_SKIPPED_LINES = 20  # the text report names this many skipped items; --json has them all


# ---------------------------------------------------------------------------------------------------------------------
# The options
# ---------------------------------------------------------------------------------------------------------------------


def source_of(args: argparse.Namespace) -> str:
    """The one source the options name ("stars", "xmp", "csv", "darktable", "digikam"), checked with its options.

    Raises:
        UserError: None or several sources, --stars without PATH, PATH with a file source, an option of another
            source.
    """
    given = [name for name, flag in SOURCES.items() if _given(args, flag)]
    if len(given) != 1:
        which = "none was" if not given else " and ".join(SOURCES[g] for g in given) + " were"
        raise UserError(f"rate needs exactly one source of ratings: --stars N PATH..., --from-xmp [PATH...], "
                        f"--from-csv FILE, --from-darktable LIBRARY.db or --from-digikam digikam4.db ({which} given).")
    source = given[0]
    if source == "stars" and not args.paths:
        raise UserError("--stars needs the photos to rate: rate --profile NAME --stars N PATH...")
    if source in ("csv", "darktable", "digikam") and args.paths:
        raise UserError(f"{SOURCES[source]} reads the photos' paths from its file; remove {args.paths[0]!r} (a PATH "
                        "goes with --stars or --from-xmp).")
    if args.moved and source not in ("darktable", "digikam"):
        raise UserError("--moved rewrites folders stored in an app's database: it goes with --from-darktable or "
                        "--from-digikam.")
    if args.digikam_root and source != "digikam":
        raise UserError("--digikam-root goes with --from-digikam.")
    if args.darktable_default is not None and source not in ("xmp", "darktable"):
        raise UserError("--darktable-default goes with --from-xmp or --from-darktable.")
    return source


def _given(args: argparse.Namespace, flag: str) -> bool:
    value = getattr(args, flag.lstrip("-").replace("-", "_"))
    return bool(value) if isinstance(value, bool) else value is not None


def pairs(values: list[str], option: str, what: str) -> list[tuple[str, str]]:
    """``["OLD=NEW", ...]`` -> [(OLD, NEW)]; UserError for a value without "=" or with an empty side."""
    out: list[tuple[str, str]] = []
    for value in values:
        left, sep, right = value.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise UserError(f"{option} takes {what}, got {value!r}.")
        out.append((left.strip(), right.strip()))
    return out


def moved_of(args: argparse.Namespace) -> dict[str, Path]:
    """``--moved OLD=NEW``: folder stored in the app's database -> where it is on this machine."""
    return {old: Path(new).expanduser().absolute() for old, new in pairs(args.moved, "--moved", "OLD=NEW")}


def digikam_roots_of(args: argparse.Namespace) -> dict[int, Path]:
    """``--digikam-root ID=FOLDER``: digiKam's AlbumRoots id -> its folder on this machine."""
    roots: dict[int, Path] = {}
    for key, folder in pairs(args.digikam_root, "--digikam-root", "ID=FOLDER (a collection's id, as the skipped rows "
                                                                  "name it, and its folder)"):
        if not key.isdigit():
            raise UserError(f"--digikam-root takes ID=FOLDER with a whole-number id, got {key!r}.")
        roots[int(key)] = Path(folder).expanduser().absolute()
    return roots


def darktable_default_of(args: argparse.Namespace) -> int | None:
    value = args.darktable_default
    if value is None:
        return None
    if not value.strip().isdigit() or not 0 <= int(value) <= 5:
        raise UserError(f"--darktable-default takes darktable's initial import rating, 0..5 (0: every darktable "
                        f"rating counts), got {value!r}.")
    return int(value)


def source_file(text: str, flag: str, what: str) -> Path:
    """The file a source option names; UserError when there is no such file."""
    path = Path(text).expanduser().absolute()
    if not path.exists():
        raise UserError(f"there is no {what} at {path} ({flag}).")
    if not path.is_file():
        raise UserError(f"{path} is not a file ({flag} takes {what}).")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------


def stars_result(store: Store, stars_text: str, paths: list[str]) -> ReadResult:
    """``--stars N PATH...`` as a reader's result.

    Raises:
        UserError: N is not -1..5, or a PATH is a folder, or neither in the library nor on disk (nothing is stored).
    """
    from pmllm_batch.ratings import ReadResult, cli_rating
    from pmllm_batch.scorer.rated import library_paths

    ratings = [cli_rating(p, stars_text) for p in dict.fromkeys(paths)]
    folders = [str(r.path) for r in ratings if r.path.is_dir()]
    if folders:
        raise UserError(f"--stars rates photo files, and {folders[0]} is a folder (to read the stars already set "
                        "under a folder, use --from-xmp FOLDER).")
    candidates = {str(r.path): library_paths(r.path) for r in ratings}
    known = store.hashes_of_paths(sorted({p for pair in candidates.values() for p in pair}))
    unknown = [p for p, pair in candidates.items() if not os.path.isfile(p) and not any(q in known for q in pair)]
    if unknown:
        more = f" (and {plural(len(unknown) - 1, 'other')})" if len(unknown) > 1 else ""
        raise UserError(f"{unknown[0]}{more}: no such photo, neither in the library nor on disk; nothing was stored.")
    return ReadResult(ratings=ratings)


def xmp_photos(store: Store, settings: Settings, paths: list[str]) -> list[Path]:
    """The photos whose XMP ``--from-xmp`` reads: under each folder by the scanner's walk and ``[scan]`` rules, each
    file given, or with no PATH every ok photo in the library.

    Raises:
        UserError: A PATH that does not exist.
    """
    if not paths:
        from pmllm_batch.contracts import PhotoStatus

        return [Path(p) for p in sorted(store.photo_index(statuses=[PhotoStatus.OK]))]
    from pmllm_batch.scan.plan import walk

    photos: list[Path] = []
    for text in paths:
        path = Path(text).expanduser().absolute()
        if path.is_dir():
            photos.extend(entry.path for entry in walk([path], settings.scan))
        elif path.exists():
            photos.append(path)
        else:
            raise UserError(f"there is no file or folder at {path} (--from-xmp reads the photos under a folder, or "
                            "the photo files given).")
    return list(dict.fromkeys(photos))


def read_source(source: str, args: argparse.Namespace, store: Store, settings: Settings) -> ReadResult:
    """Run the reader of ``source`` (read-only).

    Raises:
        UserError: The source file is missing or unusable as a whole (not a CSV, not darktable's library ...).
    """
    from pmllm_batch import ratings

    default = darktable_default_of(args)
    if source == "stars":
        return stars_result(store, args.stars, args.paths)
    if source == "xmp":
        photos = xmp_photos(store, settings, args.paths)
        return ratings.read_xmp(photos) if default is None else ratings.read_xmp(photos, darktable_default=default)
    if source == "csv":
        file = source_file(args.from_csv, "--from-csv", "CSV file")
        result = ratings.read_csv(file)
    elif source == "darktable":
        file = source_file(args.from_darktable, "--from-darktable", "darktable library")
        result = ratings.read_darktable(file, darktable_default=default, moved=moved_of(args))
    else:
        file = source_file(args.from_digikam, "--from-digikam", "digiKam database")
        result = ratings.read_digikam(file, roots=digikam_roots_of(args), moved=moved_of(args))
        for skip in result.skipped:  # the reader speaks of its keyword argument; the command line has an option
            skip.message = re.sub(r"pass roots=\{(\d+): folder\}", r"pass --digikam-root \1=FOLDER", skip.message)
    unusable = [s for s in result.skipped if s.path == file and s.reason in SOURCE_UNUSABLE]
    if unusable:
        raise UserError(f"cannot read ratings from {file}: {unusable[0].message}.")
    return result


def say_missing(source: str, report: RateReport) -> None:
    """An app database naming photos that are not here: a note on --moved (the library may have moved)."""
    missing = sum(s.reason == "photo_missing" for s in report.skipped)
    if missing and source in ("darktable", "digikam"):
        report.read.notes.append(
            f"{plural(missing, 'photo')} the database names {'is' if missing == 1 else 'are'} not on disk and not in "
            "the library: if their folder moved (or the database comes from another computer), pass --moved OLD=NEW")


# ---------------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------------


def report_dict(profile: str, source: str, report: RateReport) -> dict[str, Any]:
    """``rate --json``: every count, the skipped items and the notes."""
    counts, read = report.counts, report.read
    return {
        "profile": profile,
        "from": source,
        "stored": counts.stored,
        "new": counts.new,
        "changed": counts.changed,
        "unchanged": counts.unchanged,
        "cleared": counts.cleared,
        "by_source": dict(sorted(counts.by_source.items())),
        "not_ranked_yet": report.not_ranked_yet,
        "unrated": read.unrated,
        "import_defaults": read.import_defaults,
        "written_by_us": read.written_by_us,
        "skipped": [{"path": str(s.path), "reason": s.reason, "message": s.message} for s in report.skipped],
        "notes": list(read.notes),
    }


def describe(data: dict[str, Any]) -> str:
    """The text report: one summary line, then what is not ranked yet, each skipped item, each note."""
    why = [f"{data['import_defaults']} at darktable's import default"] if data["import_defaults"] else []
    why += [f"{data['written_by_us']} that pmllm-batch wrote"] if data["written_by_us"] else []
    lines = [
        f"{data['profile']}: {plural(data['stored'], 'rating')} stored ({data['new']} new, {data['changed']} changed, "
        f"{data['unchanged']} unchanged); {data['cleared']} cleared; {data['unrated']} unrated"
        + (f" ({', '.join(why)})" if why else "") + f"; {len(data['skipped'])} skipped"
    ]
    if len(data["by_source"]) > 1:
        lines.append("  from " + ", ".join(f"{src} {n}" for src, n in data["by_source"].items()))
    waiting = data["not_ranked_yet"]
    if waiting:
        lines.append(f"  {waiting} of them {'is' if waiting == 1 else 'are'} not ranked yet: "
                     f"{'it counts' if waiting == 1 else 'they count'} once `rank` has scored "
                     f"{'it' if waiting == 1 else 'them'}")
    skipped = data["skipped"]
    lines += [f"  skipped {s['path']} ({s['reason']}): {s['message']}" for s in skipped[:MAX_SKIPPED_LINES]]
    if len(skipped) > MAX_SKIPPED_LINES:
        lines.append(f"  ... and {len(skipped) - MAX_SKIPPED_LINES} more skipped (--json lists them all)")
    lines += [f"  note: {note}" for note in data["notes"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# CLI adapter
# ---------------------------------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rate``."""
    parser = subparsers.add_parser(
        "rate",
        help="store a person's own stars (typed, or read from XMP, a CSV, darktable or digiKam)",
        description="Store the ratings a person set as their verdicts, keyed by content so they follow a photo "
        "through moves and renames: -1 rejected, 1..5 stars, 0 clears. Exactly one source. Sidecars, photos and the "
        "apps' databases are only read. A photo, sidecar or row that cannot be read is skipped with its reason.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="with --stars: the photo files; with --from-xmp: photos or folders (default: every "
                             "ranked photo in the library)")
    parser.add_argument("--profile", required=True, metavar="NAME", help="the person whose ratings these are")
    src = parser.add_argument_group("sources (exactly one)")
    src.add_argument("--stars", metavar="N", help="rate the PATHs N: -1 rejected, 1..5 stars, 0 clears the rating")
    src.add_argument("--from-xmp", action="store_true",
                     help="xmp:Rating from sidecars (photo.jpg.xmp, photo.xmp) or embedded XMP; digiKam's pick "
                          "label 1 = rejected")
    src.add_argument("--from-csv", metavar="FILE", help="a CSV with the columns path,stars (0 clears)")
    src.add_argument("--from-darktable", metavar="LIBRARY.db", help="darktable's library database (read-only)")
    src.add_argument("--from-digikam", metavar="digikam4.db", help="digiKam's core database (read-only)")
    opts = parser.add_argument_group("reading options")
    opts.add_argument("--moved", action="append", default=[], metavar="OLD=NEW",
                      help="a folder the app's database names (OLD) is at NEW on this machine (repeatable)")
    opts.add_argument("--digikam-root", action="append", default=[], metavar="ID=FOLDER",
                      help="digiKam collection ID (AlbumRoots id) is the folder FOLDER here (repeatable)")
    opts.add_argument("--darktable-default", metavar="N",
                      help="darktable's initial import rating (default: the darktablerc beside the library, else 1); "
                           "a darktable rating equal to it is no verdict; 0 counts every rating")
    parser.add_argument("--json", action="store_true", help="the counts, skipped items and notes as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Adapter for ``rate``."""
    source = source_of(args)
    from pmllm_batch.db import Store
    from pmllm_batch.scorer.rated import store_ratings

    with Store(settings.db_url()) as store:
        store.get_profile(args.profile)  # an unknown profile is said before anything is read
        result = read_source(source, args, store, settings)
        report = store_ratings(store, args.profile, result)
    say_missing(source, report)
    data = report_dict(args.profile, source, report)
    if args.json:
        print_json(data)
    elif not args.quiet:
        print(describe(data))
    return 0


__all__ = ["describe", "read_source", "register", "report_dict", "run", "source_of"]
