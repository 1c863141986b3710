"""``pmllm-batch report``: a static, offline HTML gallery of every person's best photos.

The work lives in :mod:`pmllm_batch.outputs.report`; this module parses, calls and prints.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from pmllm_batch.config import Settings
from pmllm_batch.db import Store
from pmllm_batch.errors import UserError

from . import positive_int, print_json
from .model_options import add_checkpoint_option, output_model_id
from .view_options import add_learn_option, add_view_options, learn_of, view_of

if TYPE_CHECKING:
    from pmllm_batch.outputs.report import ReportSummary


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_summary(summary: ReportSummary) -> str:
    """One line for the report, then one per photo shown without a thumbnail, then one per person whose ranking
    learned from their ratings."""
    lines = [
        f"wrote {summary.index} ({_count(len(summary.people), 'profile')}, "
        f"{_count(summary.thumbnails_made, 'thumbnail')} made, {summary.thumbnails_reused} reused, "
        f"{_count(len(summary.problems), 'photo')} without a thumbnail, "
        f"{_count(len(summary.failures), 'failed file')} listed)"
    ]
    for p in summary.problems:
        lines.append(f"  {p.path}: {p.reason} — {p.message}")
    # whose ranking learned from their own stars (the gallery says it for everyone, "profile only" included)
    lines += [f"  {person.name}: {person.learned}" for person in summary.people if person.learned_from]
    return "\n".join(lines) + "\n"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report``."""
    parser = subparsers.add_parser(
        "report",
        help="make a static HTML gallery of every person's best photos",
        description="Write DIR/index.html (one column per person, side by side), one page per person (score, stars, "
        "capture date) and the failed files with their reasons, with thumbnails made into DIR/thumbs. The folder "
        "opens offline; photo folders are only read.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="only photos in these folders or files")
    parser.add_argument("--out", required=True, metavar="DIR", help="report folder (outside photo folders)")
    parser.add_argument("--profile", action="append", metavar="NAME", help="only this profile (repeatable)")
    parser.add_argument("--top", type=positive_int, metavar="N", help="photos per person (default: [report] top)")
    parser.add_argument("--json", action="store_true", help="machine-readable summary")
    add_checkpoint_option(parser)
    add_view_options(parser)
    add_learn_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Adapter for ``report``."""
    from pmllm_batch.outputs.report import build_report  # decoding for thumbnails: only when a report is made

    for path in args.paths:
        if not os.path.exists(path):
            raise UserError(f"PATH {path} does not exist.")
    group, scope = view_of(args, settings)
    learn, zero_shot = learn_of(args, settings)
    with Store(settings.db_url()) as store:
        model_id = output_model_id(args, settings, store)  # the library's model (None) or the one named
        summary = build_report(
            store,
            args.out,
            profiles=args.profile,
            top=args.top or settings.report.top,
            paths=args.paths or None,
            thumb_size=settings.report.thumb_size,
            shares=settings.xmp.star_shares(),
            max_pixels=settings.scan.max_pixels,
            group=group,
            scope=scope,
            model_id=model_id,
            learn=learn,
            zero_shot=zero_shot,
        )
    if args.json:
        print_json(
            {
                "index": str(summary.index),
                "people": {
                    p.name: {"page": p.page, "shown": len(p.photos), "ranked": p.ranked} for p in summary.people
                },
                # per person: "learned" or "profile only", and the ratings the ranking follows
                "learned": {
                    p.name: {"ranking": "learned" if p.learned_from else "profile only", "learned_from": p.learned_from}
                    for p in summary.people
                },
                "demo": summary.demo,
                "model": summary.model,
                "thumbnails_made": summary.thumbnails_made,
                "thumbnails_reused": summary.thumbnails_reused,
                "removed": summary.removed,
                "problems": [vars(p) for p in summary.problems],
                "failures": summary.failures,
            }
        )
    else:
        print(format_summary(summary), end="")
    return 0
