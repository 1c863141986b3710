"""The options every output command shares: ``--no-group`` and the scope (``--under``, ``--since``, ``--until``);
``--zero-shot`` (the profile-only ranking instead of the one learned from each person's stars).

Not a command itself (it is not in :data:`pmllm_batch.cli.app.COMMAND_MODULES`); ``rank``, ``export``, ``albums``,
``report`` and ``xmp`` call :func:`add_view_options` in ``register`` and :func:`view_of` in ``run``; ``rank``,
``export``, ``albums`` and ``report`` also :func:`add_learn_option` and :func:`learn_of`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pmllm_batch.config import LearnSettings, Settings
from pmllm_batch.outputs.scope import DATE_FORMATS, Scope


def add_view_options(parser: argparse.ArgumentParser, *, under: bool = True) -> None:
    """Add ``--no-group``, ``--since DATE``, ``--until DATE`` and (with ``under``) ``--under PATH``."""
    parser.add_argument(
        "--no-group", action="store_true",
        help="show every photo of a burst or near-duplicate group (default: each group once, the person's best)",
    )
    dates = " or ".join(DATE_FORMATS)
    if under:
        parser.add_argument("--under", action="append", metavar="PATH",
                            help="only photos in this folder or file (repeatable)")
    parser.add_argument("--since", metavar="DATE",
                        help=f"only photos taken on or after DATE ({dates}; the file time when not known)")
    parser.add_argument("--until", metavar="DATE",
                        help=f"only photos taken on or before DATE ({dates}; the file time when not known)")


def grouping_of(args: argparse.Namespace, settings: Settings) -> bool:
    """Group bursts? ``--no-group`` wins over ``[group] enabled``."""
    return not getattr(args, "no_group", False) and settings.group.enabled


def view_of(
    args: argparse.Namespace, settings: Settings, paths: Sequence[str] = ()
) -> tuple[bool, Scope]:
    """(group, scope) from the shared options; ``paths`` (e.g. ``PATH...``) are added to ``--under``.

    Raises:
        UserError: A bad date, or ``--since`` after ``--until``.
    """
    under = [*paths, *(getattr(args, "under", None) or [])]
    scope = Scope.of(under or None, since=getattr(args, "since", None), until=getattr(args, "until", None))
    return grouping_of(args, settings), scope


def add_learn_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--zero-shot``."""
    parser.add_argument(
        "--zero-shot", action="store_true",
        help="the profile-only ranking, ignoring the person's own ratings (default: learned from their stars when "
        "they rated photos; [learn] enabled)",
    )


def learn_of(args: argparse.Namespace, settings: Settings) -> tuple[LearnSettings, bool]:
    """(``[learn]`` settings, profile-only?) from ``--zero-shot`` and the settings."""
    return settings.learn, bool(getattr(args, "zero_shot", False))
