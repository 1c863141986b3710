"""``pmllm-batch watch PATH...``: keep every profile's ranking fresh while photos arrive, move and disappear."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import TypedDict, cast

from pmllm_batch.config import Settings
from pmllm_batch.log import get_logger

from . import summary_line
from .model_options import add_checkpoint_option, add_switch_option, scoring_settings, with_checkpoint


def non_negative_seconds(text: str) -> float:
    """argparse type: a number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds of at least 0, got {text}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    value = non_negative_seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number of seconds above 0, got 0")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``watch``."""
    parser = subparsers.add_parser(
        "watch",
        help="watch photo folders and keep each profile's ranking up to date (daemon)",
        description="Watch PATH folders (recursively): start with a full scan, then score photos as they arrive "
        "once their files have stopped changing. Moves and renames keep their scores, deleted photos leave the "
        "rankings, profiles added meanwhile are scored from cached visual tokens. A periodic full scan catches "
        "anything the watcher missed. A folder that is not there yet (an unmounted disk) is checked again, less and "
        "less often, until it appears. Stops cleanly on SIGTERM or Ctrl-C. Nothing is written into the folders.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="photo folder(s)")
    parser.add_argument("--profile", action="append", metavar="NAME",
                        help="only these profiles (repeatable; default: every stored profile, also ones added later)")
    parser.add_argument("--settle", type=non_negative_seconds, metavar="SECONDS",
                        help="a file is read once its size and mtime have not changed for this long (watch.settle)")
    parser.add_argument("--poll", action="store_true", default=None,
                        help="poll the folders instead of using inotify, e.g. for network shares (watch.poll)")
    parser.add_argument("--poll-interval", type=positive_seconds, metavar="SECONDS",
                        help="seconds between polls when polling (watch.poll_interval)")
    parser.add_argument("--reconcile-interval", type=non_negative_seconds, metavar="SECONDS",
                        help="seconds between full rescans; 0 = only at start (watch.reconcile_interval)")
    parser.add_argument("--idle-unload", type=non_negative_seconds, metavar="SECONDS",
                        help="unload the models after this long without work (watch.idle_unload)")
    parser.add_argument("--once", action="store_true",
                        help="run the full scan once (waiting out the settle window of files still being copied), "
                        "score what is missing, and exit (for cron and scripts)")
    add_checkpoint_option(parser, scores=False)
    add_switch_option(parser)
    parser.set_defaults(func=run)


class _WatchFlags(TypedDict, total=False):
    """The ``[watch]`` settings given as flags (argparse's types make the seconds floats; ``--poll`` is True)."""

    settle: float
    poll: bool
    poll_interval: float
    reconcile_interval: float
    idle_unload: float


def watch_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """``settings`` with the command's flags applied to its ``[watch]`` section (flags win over every file)."""
    given: dict[str, float | bool | None] = {  # None: the flag was not given
        "settle": args.settle,
        "poll": args.poll,
        "poll_interval": args.poll_interval,
        "reconcile_interval": args.reconcile_interval,
        "idle_unload": args.idle_unload,
    }
    flags = cast(_WatchFlags, {k: v for k, v in given.items() if v is not None})
    watch = dataclasses.replace(settings.watch, **flags)
    return dataclasses.replace(settings, watch=watch)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Adapter for ``watch``."""
    from pmllm_batch.daemon.service import WatchService
    from pmllm_batch.db import Store

    if not args.quiet and not args.verbose:
        # A daemon's log is its only output: say what each batch did and when models load or unload, even at the
        # default verbosity (other commands keep those lines for -v).
        for name in ("daemon", "models"):
            get_logger(name).setLevel(logging.INFO)
    settings = watch_settings(settings, args)
    with Store(settings.db_url()) as store:
        # the library's model unless the command line names another (refused without --switch-model: exit 2)
        settings = scoring_settings(args, with_checkpoint(args, settings), store, args.profile).settings
        service = WatchService(settings, store, args.paths, args.profile, once=args.once)
        totals = service.run()
    if args.once and not args.quiet:  # -q: nothing on success (the README's cron line mails any output)
        sys.stdout.write(summary_line(totals.to_dict()) + "\n")
    return 0
