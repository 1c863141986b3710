"""``pmllm-batch forget PATH... [--dry-run] [--json]``: drop folders from the library (never the files).

The photo rows at or under each PATH go, with the scores, cached features and burst embeddings and links of content
that no other photo row still has (:mod:`pmllm_batch.db.forget`). ``--dry-run`` says what would go and changes
nothing. A PATH with no photo row at or under it is one sentence and exit 2, and nothing is forgotten.
"""

from __future__ import annotations

import argparse
import json
import os

from pmllm_batch.config import Settings
from pmllm_batch.db import Store
from pmllm_batch.db.forget import ForgetCounts
from pmllm_batch.errors import UserError
from pmllm_batch.log import get_logger

from . import plural

log = get_logger("cli")


def describe(counts: ForgetCounts, paths: list[str], *, dry_run: bool) -> str:
    """The one-paragraph report: what went (or would go), and that no file was touched."""
    where = ", ".join(paths)
    head = "would forget" if dry_run else "forgot"
    ok = f" ({counts.ok} ranked)" if counts.ok != counts.photos else ""
    lines = [
        f"{head} {plural(counts.photos, 'photo')}{ok} under {where}",
        f"  {'would remove' if dry_run else 'removed'}: {plural(counts.scores, 'score')}, "
        f"{plural(counts.features, 'feature-cache entry', 'feature-cache entries')}, "
        f"{plural(counts.embeddings, 'burst embedding')}, {plural(counts.links, 'burst link')}",
    ]
    if counts.shared:
        lines.append(f"  {'would keep' if dry_run else 'kept'}: the scores of {plural(counts.shared, 'photo')} "
                     "whose content is also stored at another path")
    lines.append("  dry run: nothing changed" if dry_run else "  no file was touched")
    return "\n".join(lines)


def _say_waiting(store: Store) -> None:
    try:
        others = store.others_running()
    except UserError:
        others = []
    who = ", ".join(f"{r['kind']} (pid {r['pid']} on {r['host']})" for r in others) or "another pmllm-batch process"
    log.warning("%s is working on this library; waiting until it is done", who)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``forget``."""
    parser = subparsers.add_parser(
        "forget",
        help="drop folders' photos from the library (rows, scores, cached features; never the files)",
        description="Remove the photos at or under each PATH from the library: their rows, and the scores, cached "
        "features and burst links of content that no other stored photo has. The files are never touched; ranking "
        "the folder again brings the photos back. Stop a `watch` on the folder first, or it adds them again.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a folder (or file) as it was ranked")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed; change nothing")
    parser.add_argument("--json", action="store_true", help="the counts as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Adapter for ``forget``."""
    paths = list(dict.fromkeys(os.path.abspath(os.path.expanduser(p)) for p in args.paths))
    with Store(settings.db_url()) as store:
        if args.dry_run:
            counts = store.forget(paths, dry_run=True)
        else:
            with store.work_lock(on_wait=lambda: _say_waiting(store)):  # not in the middle of a rank or a batch
                counts = store.forget(paths)
    if args.json:
        print(json.dumps({"paths": paths, "dry_run": bool(args.dry_run), **counts.to_dict()}))
    elif args.dry_run or not args.quiet:  # a dry run prints what it is for, even with -q
        print(describe(counts, paths, dry_run=args.dry_run))
    return 0


__all__ = ["describe", "register", "run"]
