"""``pmllm-batch status``: what the library database holds, and which photos failed and why."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pmllm_batch.config import Settings
from pmllm_batch.db import Store

from . import human_bytes, print_json


def format_status(status: dict[str, Any]) -> str:
    """Human-readable report of :meth:`Store.status` (counts first, then one line per failed photo)."""
    photos = status["photos"]
    lines = [
        f"database: {status['db']}",
        f"photos: {photos['ok']} ok, {photos['failed']} failed, {photos['missing']} missing",
        f"profiles: {status['profiles']}",
    ]
    current = status.get("current_model")
    models = f"models: {status['models']}"
    if current:
        models += f" (current: preset {current['preset']}, fingerprint {current['fingerprint'][:12]})"
    lines.append(models)
    lines.append(f"scores (current model): {status['scores_current_model']}")
    cache = status["visual_cache"]
    lines.append(f"visual-token cache: {cache['entries']} entries, {human_bytes(cache['bytes'])}")
    run = status.get("last_run")
    if run:
        when = f"started {run['started_at']}"
        if run.get("finished_at"):
            when += f", finished {run['finished_at']}"
        reason = (run.get("summary") or {}).get("reason") if run["status"] == "interrupted" else None
        lines.append(f"last run: {run['kind']} {run['status']} ({when})" + (f": {reason}" if reason else ""))
    else:
        lines.append("last run: none")
    failures = status["failures"]
    if failures:
        lines.append(f"failures ({len(failures)}):")
        for item in failures:
            lines.append(f"  {item['path']}: {item['reason'] or 'unknown'} — {item['message'] or ''}".rstrip(" —"))
    return "\n".join(lines) + "\n"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``status``."""
    parser = subparsers.add_parser(
        "status",
        help="show library counts and failed photos",
        description="Show what the database holds: photos by status, profiles, models, scores, cache, last run, "
        "and every photo that failed with its reason.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Adapter for ``status``."""
    with Store(settings.db_url()) as store:
        status = store.status()
    if args.json:
        print_json(status)
    else:
        sys.stdout.write(format_status(status))
    return 0
