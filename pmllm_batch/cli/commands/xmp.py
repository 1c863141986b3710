"""``pmllm-batch xmp``: one person's stars and everybody's keywords in XMP sidecars next to the photos.

The work lives in :mod:`pmllm_batch.outputs.xmp`; this module parses, calls and prints.
"""

from __future__ import annotations

import argparse
import os

from pmllm_batch.config import Settings
from pmllm_batch.db import Store
from pmllm_batch.errors import UserError
from pmllm_batch.log import get_logger
from pmllm_batch.outputs.xmp import NAMINGS, XmpSummary, write_sidecars

from . import print_json
from .model_options import add_checkpoint_option, output_model_id
from .view_options import add_view_options, view_of

log = get_logger("cli.xmp")


def format_summary(summary: XmpSummary) -> str:
    """Human-readable result: one counts line, the sidecars cleaned of stale marks, then one line per problem grouped
    by reason (the wording lives with the summary: :meth:`XmpSummary.describe`)."""
    return summary.describe()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``xmp``."""
    parser = subparsers.add_parser(
        "xmp",
        help="write star ratings and keywords into XMP sidecars next to the photos",
        description="Write (or merge into) an XMP sidecar for every scored photo: xmp:Rating 1-5 stars for one "
        "profile from its rank percentile ([xmp] stars_*), keywords for every profile (lr:hierarchicalSubject, "
        "digiKam:TagsList, dc:subject) and the scores in our own namespace. Every other field of an existing "
        "sidecar is kept, and a rating you changed in your photo app is kept unless --overwrite-ratings. Photo "
        "files are never opened; only sidecars are written.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="only photos in these folders or files")
    parser.add_argument("--profile", metavar="NAME", help="whose stars go into xmp:Rating (default: [xmp] profile)")
    parser.add_argument("--dry-run", action="store_true", help="say what would change, write nothing")
    parser.add_argument(
        "--naming",
        choices=NAMINGS,
        help="sidecar name: append = photo.jpg.xmp (darktable, digiKam), replace = photo.xmp (Lightroom); "
        "default: [xmp] naming",
    )
    parser.add_argument(
        "--overwrite-ratings", action="store_true", help="also replace ratings changed in a photo app"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable summary")
    add_checkpoint_option(parser)
    add_view_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Adapter for ``xmp``."""
    profile = args.profile or settings.xmp.profile
    if not profile:
        raise UserError("say whose stars to write: --profile NAME (or set [xmp] profile in the config).")
    for path in args.paths:
        if not os.path.exists(path):
            raise UserError(f"PATH {path} does not exist.")
    group, scope = view_of(args, settings)
    with Store(settings.db_url()) as store:
        model_id = output_model_id(args, settings, store)  # the library's model (None) or the one named
        summary = write_sidecars(
            store,
            profile,
            naming=args.naming or settings.xmp.naming,
            shares=settings.xmp.star_shares(),
            paths=args.paths or None,
            dry_run=args.dry_run,
            overwrite_ratings=args.overwrite_ratings or settings.xmp.overwrite_ratings,
            group=group,
            scope=scope,
            model_id=model_id,
            learn=settings.learn,
        )
    if summary.model is None:
        log.warning("nothing is scored yet; run `pmllm-batch rank PATH` first")
    if args.json:
        print_json(summary.as_dict())
    else:
        print(format_summary(summary), end="")
    return 0
