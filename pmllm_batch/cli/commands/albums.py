"""``pmllm-batch albums``: one folder per profile holding its best photos, as symlinks or copies.

The work (and its safety rules) lives in :mod:`pmllm_batch.outputs.albums`; this module parses and prints.
"""

from __future__ import annotations

import argparse

from pmllm_batch.config import Settings
from pmllm_batch.db import Store
from pmllm_batch.outputs.albums import DEFAULT_TOP, build_albums

from . import plural, positive_int
from .model_options import add_checkpoint_option, output_model_id
from .view_options import add_learn_option, add_view_options, learn_of, view_of


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``albums``."""
    parser = subparsers.add_parser(
        "albums",
        help="make one folder per profile with its best photos",
        description="Make OUT/<profile>/ for each profile holding its top photos as symlinks (or copies), "
        "named NNN_<file name> by rank. Re-running replaces only the entries it made before.",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the albums (outside photo folders)")
    parser.add_argument("--top", type=positive_int, default=DEFAULT_TOP, metavar="N", help="photos per album")
    parser.add_argument("--profile", action="append", metavar="NAME", help="only this profile (repeatable)")
    parser.add_argument("--copy", action="store_true", help="copy the files instead of symlinking them")
    add_checkpoint_option(parser)
    add_view_options(parser)
    add_learn_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Adapter for ``albums``."""
    group, scope = view_of(args, settings)
    learn, zero_shot = learn_of(args, settings)
    with Store(settings.db_url()) as store:
        model_id = output_model_id(args, settings, store)  # the library's model (None) or the one named
        results = build_albums(store, args.out, profiles=args.profile, top=args.top, copy=args.copy, group=group,
                               scope=scope, model_id=model_id, learn=learn, zero_shot=zero_shot)
    for r in results:
        kind = "copies" if r.mode == "copy" else "symlinks"
        line = f"{r.profile}: {plural(len(r.entries), 'photo')} in {r.folder} ({kind})"
        if r.skipped:
            line += f", {len(r.skipped)} left out (no longer on disk)"
        if r.learned_from:  # an album of a person who rated nothing reads as before
            line += f"; {r.learned}"
        print(line)
    return 0
