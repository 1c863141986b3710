"""The ``pmllm-batch`` argument parser: global options plus one module per subcommand.

Each module in :data:`COMMAND_MODULES` lives in ``pmllm_batch/cli/commands/`` and exposes
``register(subparsers) -> None`` (adds its parser and sets ``func=run``) and ``run(args, settings) -> int``
(beets ``ui/commands``: the work is a pure function in the module, ``run`` only adapts the options).
Modules are imported when the parser is built, so keep heavy imports (torch …) inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from pmllm_batch.config import as_db_url
from pmllm_batch.version import __version__

PROG = "pmllm-batch"

# One subcommand module per entry, in the order `--help` lists them. Add new commands here.
COMMAND_MODULES = [
    "rank",
    "watch",
    "profile",
    "export",
    "albums",
    "status",
    "train",
    "eval",
    "export_onnx",
    "bench",
]


def build_parser() -> argparse.ArgumentParser:
    """The full parser: global options, then one subparser per module in :data:`COMMAND_MODULES`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Rank a photo library for each person profile with P-MLLM; rankings are kept in SQLite.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", metavar="FILE", help="config file (default: $PMLLM_CONFIG or the XDG one)")
    parser.add_argument("--db", metavar="URL_OR_PATH", help="database: SQLAlchemy URL or SQLite file path")
    parser.add_argument("--preset", metavar="NAME", help="model preset (overrides model.preset)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"pmllm_batch.cli.commands.{name}")
        module.register(subparsers)
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Settings overrides from the global flags (the last config layer)."""
    overrides: dict[str, dict[str, Any]] = {}
    if args.db:
        overrides.setdefault("db", {})["url"] = as_db_url(args.db)
    if args.preset:
        overrides.setdefault("model", {})["preset"] = args.preset
    return overrides
