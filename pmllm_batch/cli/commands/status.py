"""``pmllm-batch status``: what the library database holds, and which photos failed and why."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pmllm_batch.config import Settings
from pmllm_batch.contracts import PhotoStatus, learned_text
from pmllm_batch.db import quick
from pmllm_batch.db.plain import model_label
from pmllm_batch.errors import DBAccessError

from . import human_bytes, plural, print_json

if TYPE_CHECKING:
    from pmllm_batch.db.store import LibraryStatus

# Start-up time (issue 24: at most 0.5 s): nothing here imports SQLAlchemy. An up-to-date SQLite library is read by
# pmllm_batch.db.quick; the Store (and SQLAlchemy with it) is imported only for the other cases and for --check.


def format_status(status: LibraryStatus, *, verbose: bool = False, learning: bool = True) -> str:
    """Human-readable report of :meth:`Store.status`: counts first (each person's ranking: learned from how many of
    their ratings, or profile only), the library's model, then one line per failed photo (and with ``verbose`` one
    per photo whose EXIF could not be read). ``learning``: ``[learn] enabled``."""
    photos = status["photos"]
    lines = [
        f"database: {status['db']}",
        f"photos: {photos[PhotoStatus.OK]} ok, {photos[PhotoStatus.FAILED]} failed, "
        f"{photos[PhotoStatus.MISSING]} missing"
        + (f", {photos[PhotoStatus.SKIPPED]} skipped (too small, or a RAW+JPEG pair's RAW)"
           if photos.get(PhotoStatus.SKIPPED) else ""),
        f"profiles: {status['profiles']}",
    ]
    for name, n in (status.get("ratings") or {}).items():
        said = learned_text(n if learning else 0)
        lines.append(f"  {name}: {said}" + (f" ({plural(n, 'rating')} kept; [learn] enabled = false)"
                                             if n and not learning else ""))
    current = status.get("current_model")
    others = status["models"] - (1 if current else 0)
    more = f"; {plural(others, 'other model')} in the library" if others > 0 else ""
    if current:
        lines.append(f"model: {model_label(current)}, "
                     f"{plural(status.get('photos_scored_current_model', 0), 'photo')} scored{more}")
        if current.get("demo"):
            lines.append(f"  note: {current.get('note') or 'a demo model: its scores show the mechanism only'}")
    else:
        lines.append(f"model: none yet (the first `pmllm-batch rank PATH` sets the library's model){more}")
    lines.append(f"scores (current model): {status['scores_current_model']}")
    warnings = status.get("exif_warnings") or []
    if warnings:
        lines.append(f"exif warnings: {plural(len(warnings), 'photo')} ranked with EXIF that could not be read"
                     + (" (-v lists them)" if not verbose else ":"))
        if verbose:
            lines += [f"  {w['path']}: {w['warning']}" for w in warnings]
    cache = status["visual_cache"]
    line = f"visual-token cache: {cache['entries']} entries, {human_bytes(cache['bytes'])}"
    if cache.get("budget_bytes"):
        line += f" of a {human_bytes(cache['budget_bytes'])} budget"
    if cache.get("evicted"):
        line += f"; {cache['evicted']} evicted (least recently used first)"
    lines.append(line)
    run = status.get("last_run")
    if run:
        when = f"started {run['started_at']}"
        if run.get("finished_at"):
            when += f", finished {run['finished_at']}"
        summary = run.get("summary") or {}
        reason = summary.get("reason") if run["status"] == "interrupted" and isinstance(summary, dict) else None
        lines.append(f"last run: {run['kind']} {run['status']} ({when})" + (f": {reason}" if reason else ""))
    else:
        lines.append("last run: none")
    failures = status["failures"]
    if failures:
        lines.append(f"failures ({len(failures)}):")
        for item in failures:
            lines.append(f"  {item['path']}: {item['reason'] or 'unknown'} — {item['message'] or ''}".rstrip(" —"))
    return "\n".join(lines) + "\n"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``status``."""
    parser = subparsers.add_parser(
        "status",
        help="show library counts and failed photos",
        description="Show what the database holds: photos by status, profiles, models, scores, cache, last run, "
        "and every photo that failed with its reason.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--check", action="store_true",
                        help="also check the database itself (SQLite integrity, unique scores, references); "
                        "a damaged database is one sentence and exit code 4")
    parser.set_defaults(func=run)


def read_status(url: str, *, check: bool = False) -> LibraryStatus:
    """:meth:`Store.status` of the database at ``url``, with ``read_only`` when it can only be read, and with
    ``check`` the result of :meth:`Store.check` (``{"ok": True, "checked": …}``).

    Raises:
        DBAccessError: The database cannot be opened, or ``check`` found it damaged (exit code 4).
    """
    from pmllm_batch.db import Store

    with Store(url) as store:
        checked = None
        if check:
            problems, what = store.check()
            if problems:
                more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
                raise DBAccessError(
                    f"the database at {store.label} is damaged: {'; '.join(problems[:5])}{more}; restore it from a "
                    "backup (a library.sqlite.v*.bak next to it, if any) or move it aside to start a new one."
                )
            checked = what
        status = store.status()
        if store.read_only:
            status["read_only"] = True
    if checked is not None:
        status["check"] = {"ok": True, "checked": checked}
    return status


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Adapter for ``status``."""
    url = settings.db_url()
    # The quick read gives exactly what the Store gives, or None (another backend or schema, anything unusual).
    status = None if args.check else quick.library_status(url)
    if status is None:
        status = read_status(url, check=args.check)
    status["visual_cache"]["budget_bytes"] = settings.vision.cache_budget_bytes
    if args.json:
        print_json(status)
    else:
        text = format_status(status, verbose=bool(args.verbose), learning=settings.learn.enabled)
        if status.get("read_only"):
            text += "database is read-only for this user: it can be read, not written\n"
        if "check" in status:
            text += f"check: ok ({status['check']['checked']})\n"
        sys.stdout.write(text)
    return 0
