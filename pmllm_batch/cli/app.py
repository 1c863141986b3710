"""The ``pmllm-batch`` argument parser: global options plus one module per subcommand.

Each module in :data:`COMMAND_MODULES` lives in ``pmllm_batch/cli/commands/`` and exposes
``register(subparsers) -> None`` (adds its parser and sets ``func=run``) and ``run(args, settings) -> int``
(beets ``ui/commands``: the work is a pure function in the module, ``run`` only adapts the options).
Modules are imported when the parser is built, so keep heavy imports (torch, SQLAlchemy …) inside ``run``: ``status``
and ``profile list`` must start in at most 0.5 s (issue 24).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import TypedDict

from pmllm_batch.config import as_db_url
from pmllm_batch.db.quick import sqlite_database
from pmllm_batch.errors import DBAccessError
from pmllm_batch.version import __version__

PROG = "pmllm-batch"

# One subcommand module per entry, in the order `--help` lists them. Add new commands here.
COMMAND_MODULES = [
    "rank",
    "watch",
    "profile",
    "rate",
    "export",
    "albums",
    "xmp",
    "report",
    "status",
    "forget",
    "train",
    "eval",
    "export_onnx",
    "bench",
]


class _OptionSpec(TypedDict, total=False):
    """The ``add_argument`` keywords a global option uses."""

    metavar: str
    help: str
    action: str


# Options every command accepts, before it (``pmllm-batch --db X rank``) or after it (``pmllm-batch rank --db X``).
GLOBAL_OPTIONS: list[tuple[tuple[str, ...], _OptionSpec]] = [
    (("--config",), {"metavar": "FILE", "help": "config file (default: $PMLLM_CONFIG or the XDG one)"}),
    (("--db",), {"metavar": "URL_OR_PATH", "help": "database: SQLAlchemy URL or SQLite file path (its folder must "
                                                   "exist; only the default location is created on its own)"}),
    (("--preset",), {"metavar": "NAME", "help": "model preset (overrides model.preset)"}),
    (("-v", "--verbose"), {"action": "count", "help": "more log output (repeat for debug)"}),
    (("-q", "--quiet"), {"action": "store_true", "help": "errors only: nothing is printed on success"}),
]
_GLOBAL_DEFAULTS = {"config": None, "db": None, "preset": None, "verbose": 0, "quiet": False}
_AFTER = "_after_"  # dest prefix of a global option given after the command


def _dest(flags: tuple[str, ...]) -> str:
    return flags[-1].lstrip("-").replace("-", "_")


class _Parser(argparse.ArgumentParser):
    """The top-level parser: merges global options given after the command into the usual attributes."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def,override]
        parsed, extras = super().parse_known_args(args, namespace)
        for name in _GLOBAL_DEFAULTS:
            if not hasattr(parsed, _AFTER + name):
                continue
            late = getattr(parsed, _AFTER + name)
            delattr(parsed, _AFTER + name)
            if name == "verbose":
                parsed.verbose = (parsed.verbose or 0) + late
            elif name == "quiet":
                parsed.quiet = parsed.quiet or late
            else:
                setattr(parsed, name, late)
        return parsed, extras


def _subparsers_of(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                out.append(child)
                out.extend(_subparsers_of(child))
    return out


def _accept_global_options(parser: argparse.ArgumentParser) -> None:
    for child in _subparsers_of(parser):
        group = child.add_argument_group("global options (also accepted before the command)")
        for flags, spec in GLOBAL_OPTIONS:
            taken = [f for f in flags if f in child._option_string_actions]
            if taken:
                continue  # the command has an option of its own under this name (bench --preset)
            group.add_argument(*flags, dest=_AFTER + _dest(flags), default=argparse.SUPPRESS, **spec)


def command_module(argv: list[str] | None) -> str | None:
    """The module of the command ``argv`` names (its first word that is a command), or None (help, a typo ...)."""
    for word in argv or []:
        if word == "--":
            return None
        name = word.replace("-", "_")
        if not word.startswith("-") and name in COMMAND_MODULES:
            return name
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser: global options, then one subparser per module in :data:`COMMAND_MODULES`.

    With ``only`` (a module name) just that command's parser is built, so ``status`` or ``profile list`` imports
    no other command's dependencies (start-up time); the full parser serves ``--help`` and mistakes.
    """
    parser = _Parser(
        prog=PROG,
        description="Rank a photo library for each person profile with P-MLLM; rankings are kept in SQLite.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for flags, spec in GLOBAL_OPTIONS:
        parser.add_argument(*flags, default=_GLOBAL_DEFAULTS[_dest(flags)], **spec)
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=argparse.ArgumentParser
    )
    for name in [only] if only in COMMAND_MODULES else COMMAND_MODULES:
        module = importlib.import_module(f"pmllm_batch.cli.commands.{name}")
        module.register(subparsers)
    _accept_global_options(parser)
    return parser


# Commands that never open the library database (a bad --db must not stop them).
NO_DB_COMMANDS = frozenset({"train", "eval", "export-onnx", "bench"})


def creates_db(args: argparse.Namespace) -> bool:
    """Whether the command may create a new database (others only read one: a missing file is a mistake)."""
    return args.command in ("rank", "watch") or (args.command == "profile" and args.profile_action == "add")


def check_db_location(raw: str, url: str, *, create: bool = True) -> None:
    """Refuse a database location that would create something the user did not mean, before anything is made.

    Only the default location is created on its own. An explicit SQLite path whose folder does not exist is one
    sentence (nothing is created), and so is a value that is neither a URL nor a plausible file name (``"not a url
    ::"``). Everything else is left to the database layer, which names its own reason.

    Args:
        raw: ``db.url`` as given (``--db``, the config file or the environment); "" for the default location.
        url: The SQLAlchemy URL it resolves to.
        create: The command may create a new database file (``rank``, ``watch``, ``profile add``); a command that
            only reads is told there is none instead of creating an empty one.

    Raises:
        DBAccessError: One of the cases above.
    """
    if not raw:
        return
    database = _sqlite_file(url)
    if database is None:
        return
    path = Path(database).expanduser()
    if path.is_dir():
        raise DBAccessError(
            f"cannot open the database at {path}: it is a folder; give a file in it, e.g. "
            f"--db {path / 'library.sqlite'}."
        )
    if path.exists():
        return
    if "://" not in raw and ":" in path.name:
        raise DBAccessError(
            f"cannot open the database at {raw!r}: it is neither a database URL (dialect://..., e.g. "
            "postgresql://user@host/library) nor a usable SQLite file name (a new file's name may not contain ':')."
        )
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor != path.parent and ancestor.is_dir():
        raise DBAccessError(
            f"cannot open the database at {path}: the folder {path.parent} does not exist (create it first, or "
            "choose another --db; only the default database folder is created on its own)."
        )
    if not create and path.parent.is_dir():
        raise DBAccessError(
            f"there is no database at {path} yet (check --db; `pmllm-batch profile add` or `rank` creates it)."
        )


def _sqlite_file(url: str) -> str | None:
    """The SQLite file ``url`` names; None for another backend, a memory database, a ``file:`` URI or a URL that is
    not valid (the database layer names its own reason)."""
    database = sqlite_database(url)  # the usual sqlite:///FILE, read without importing SQLAlchemy (start-up time)
    if database is not None:
        return database
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # the database layer says "not a valid database URL"
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return database


def overrides_from_args(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """Settings overrides from the global flags (the last config layer)."""
    overrides: dict[str, dict[str, str]] = {}
    if args.db:
        overrides.setdefault("db", {})["url"] = as_db_url(args.db)
    if args.preset:
        overrides.setdefault("model", {})["preset"] = args.preset
    return overrides
