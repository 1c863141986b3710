"""``pmllm-batch export``: write one profile's ranking as CSV or JSON (stdout, or one file).

The rendering lives in :mod:`pmllm_batch.outputs.tabular`; this module parses, calls and writes. The table's format
is the same whether the ranking learned from the person's stars or not; when it did (or with ``--zero-shot``) one
line on stderr says so: ``ana: learned from 3 of your ratings`` / ``ana: profile only``.
"""

from __future__ import annotations

import argparse
import sys

from pmllm_batch.config import Settings
from pmllm_batch.db import Store
from pmllm_batch.log import get_logger
from pmllm_batch.outputs.tabular import FORMATS, export_ranking

from . import plural, positive_int, write_text_atomic
from .model_options import add_checkpoint_option, output_model_id
from .view_options import add_learn_option, add_view_options, learn_of, view_of

log = get_logger("cli.export")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export``."""
    parser = subparsers.add_parser(
        "export",
        help="write a profile's ranking as CSV or JSON",
        description="Write one profile's ranking (the library's model, or the model --preset/--checkpoint name) as "
        "CSV or JSON, to stdout or to --out.",
    )
    parser.add_argument("--profile", required=True, metavar="NAME", help="profile whose ranking to export")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="output format (default: csv)")
    parser.add_argument("--top", type=positive_int, metavar="N", help="only the N best photos")
    parser.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    add_checkpoint_option(parser)
    add_view_options(parser)
    add_learn_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Adapter for ``export``."""
    group, scope = view_of(args, settings)
    learn, zero_shot = learn_of(args, settings)
    with Store(settings.db_url()) as store:
        model_id = output_model_id(args, settings, store)  # the library's model (None) or the one named
        table = export_ranking(store, args.profile, args.format, top=args.top, group=group, scope=scope,
                               model_id=model_id, learn=learn, zero_shot=zero_shot)
    if not table.rows:
        log.warning("profile %s has no scored photos for the current model yet (run `pmllm-batch rank`)", args.profile)
    learned = table.learned
    if learned is not None and (learned.n_ratings or zero_shot) and not args.quiet:
        sys.stderr.write(f"{args.profile}: {learned.describe()}\n")  # a table stays a table: the note goes aside
    if args.out:
        target = write_text_atomic(args.out, table.text)
        log.info("wrote %s to %s", plural(table.rows, "row"), target)
    else:
        sys.stdout.write(table.text)
    return 0
