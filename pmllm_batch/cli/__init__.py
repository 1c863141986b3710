"""Command-line entry point ``pmllm-batch``.

Errors are handled once, here (beets ``ui.main``): a :class:`~pmllm_batch.errors.UserError` becomes one line
``pmllm-batch: error: <sentence>`` on stderr and its exit code; Ctrl-C exits 130. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from pmllm_batch.cli.app import (
    NO_DB_COMMANDS,
    PROG,
    build_parser,
    check_db_location,
    command_module,
    creates_db,
    overrides_from_args,
)
from pmllm_batch.config import load_config
from pmllm_batch.errors import UserError
from pmllm_batch.log import get_logger, setup_logging

log = get_logger("cli")

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `... | head`


def _print_error(message: str) -> None:
    # Exactly one line, whatever the message holds.
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


def _silence_stdout() -> None:
    # The reader of our stdout went away (`| head`); point stdout at /dev/null so the interpreter's final flush
    # does not raise a second BrokenPipeError (Python docs, "Note on SIGPIPE").
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (captured in tests)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pmllm-batch`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    words = list(argv) if argv is not None else sys.argv[1:]
    if "--version" in words and command_module(words) is None:  # no parser, no command module: start-up only
        from pmllm_batch.version import __version__

        print(f"{PROG} {__version__}")
        return 0
    parser = build_parser(command_module(words))
    try:
        args = parser.parse_args(words)
    except SystemExit as exc:  # --help / --version (0) or a usage error (2); argparse already printed why
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)

    setup_logging(-1 if args.quiet else min(args.verbose, 2))
    try:
        # Loaded after logging is set up (beets holds config errors back for the same reason), exactly once.
        settings = load_config(args.config, overrides=overrides_from_args(args))
        if args.command not in NO_DB_COMMANDS:
            check_db_location(args.db or settings.db.url, settings.db_url(), create=creates_db(args))
        return int(args.func(args, settings) or 0)
    except UserError as exc:
        log.debug("user error", exc_info=True)  # the traceback, for -vv only
        _print_error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # A command that saved work says what (LibraryScorer: "12 photos through vision and 40 scored (photo,
        # profile) pairs were saved; run the same command again to do the rest").
        detail = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        print(f"{PROG}: interrupted" + (f": {detail}" if detail else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


__all__ = ["main"]
