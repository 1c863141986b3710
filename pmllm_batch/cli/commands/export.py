"""``pmllm-batch export``: write one profile's ranking as CSV or JSON (stdout, or one file)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence

from pmllm_batch.config import Settings
from pmllm_batch.db import RankedPhoto, Store
from pmllm_batch.log import get_logger

from . import positive_int, write_text_atomic

log = get_logger("cli.export")

EXPORT_FIELDS = ("rank", "path", "score", "content_hash", "taken_at")
FORMATS = ("csv", "json")


def render_ranking(ranking: Sequence[RankedPhoto], fmt: str) -> str:
    """Ranking as text.

    Args:
        ranking: From :meth:`Store.ranking`.
        fmt: "json" (a list of objects with :data:`EXPORT_FIELDS`) or "csv" (header row, then one row each;
            an unknown capture time is an empty cell).

    Returns:
        The text, ending with a newline. Scores are written with full float precision, so they read back equal.
    """
    rows = [{name: getattr(item, name) for name in EXPORT_FIELDS} for item in ranking]
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export``."""
    parser = subparsers.add_parser(
        "export",
        help="write a profile's ranking as CSV or JSON",
        description="Write one profile's ranking (current model) as CSV or JSON, to stdout or to --out.",
    )
    parser.add_argument("--profile", required=True, metavar="NAME", help="profile whose ranking to export")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="output format (default: csv)")
    parser.add_argument("--top", type=positive_int, metavar="N", help="only the N best photos")
    parser.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Adapter for ``export``."""
    with Store(settings.db_url()) as store:
        ranking = store.ranking(args.profile, top=args.top)
    if not ranking:
        log.warning("profile %s has no scored photos for the current model yet (run `pmllm-batch rank`)", args.profile)
    text = render_ranking(ranking, args.format)
    if args.out:
        target = write_text_atomic(args.out, text)
        log.info("wrote %d rows to %s", len(ranking), target)
    else:
        sys.stdout.write(text)
    return 0
