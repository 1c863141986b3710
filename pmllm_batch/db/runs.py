"""The ``runs`` table: one row per batch run, with the pid and host of the process that runs it.

A "running" row whose process on this host is gone (kill -9, a crash, a power cut) reads as
interrupted, and the next run on the same host closes it for good, instead of it staying "running" for ever.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from pmllm_batch.db.plain import RunRow, abandoned, run_info
from pmllm_batch.db.records import RunInfo, RunningRun
from pmllm_batch.db.schema import Run, utcnow

FINISHED_RUN_STATUSES = ("ok", "interrupted", "failed")


def _abandoned(run: Run, host: str) -> str | None:
    """Why a "running" row can no longer be running (its process on this host is gone), or None."""
    return abandoned(run.status, run.host, run.pid, host)


def start(s: Session, kind: str, args: Mapping[str, object]) -> int:
    """Record a run as "running" with this process's pid and host, after closing this host's abandoned ones."""
    host = socket.gethostname()
    for old in s.scalars(select(Run).where(Run.status == "running", Run.host == host)):
        if reason := _abandoned(old, host):
            old.status, old.finished_at = "interrupted", utcnow()
            old.summary_json = json.dumps({"reason": reason})
    run = Run(
        kind=kind,
        started_at=utcnow(),
        status="running",
        args_json=json.dumps(args, sort_keys=True, default=str),
        pid=os.getpid(),
        host=host,
    )
    s.add(run)
    s.flush()
    return run.id


def check_finished_status(status: str) -> None:
    """Raise ValueError unless ``status`` closes a run (checked before any transaction opens)."""
    if status not in FINISHED_RUN_STATUSES:
        raise ValueError(f"run status must be one of {FINISHED_RUN_STATUSES}, got {status!r}")


def finish(s: Session, run_id: int, status: str, summary: Mapping[str, object]) -> None:
    """Close a run with ``status`` and its summary (ValueError for an unknown id)."""
    run = s.get(Run, run_id)
    if run is None:
        raise ValueError(f"no run with id {run_id}")
    run.status = status
    run.finished_at = utcnow()
    run.summary_json = json.dumps(summary, sort_keys=True, default=str)


def _as_dict(run: Run) -> RunInfo:
    return run_info(RunRow(run.id, run.kind, run.status, run.pid, run.host, run.started_at, run.finished_at,
                           run.args_json, run.summary_json), socket.gethostname())


def last(s: Session) -> RunInfo | None:
    """The newest run as a JSON-able dict (an abandoned one reads as interrupted), or None before any run."""
    run = s.scalar(select(Run).order_by(Run.id.desc()).limit(1))
    return _as_dict(run) if run is not None else None


def others_running(s: Session) -> list[RunningRun]:
    """Runs marked "running" by another process that may still be alive (for "waiting for ..." messages)."""
    host, me = socket.gethostname(), os.getpid()
    out: list[RunningRun] = []
    for run in s.scalars(select(Run).where(Run.status == "running").order_by(Run.id)):
        if (run.host == host and run.pid == me) or _abandoned(run, host):
            continue
        out.append({"id": run.id, "kind": run.kind, "pid": run.pid, "host": run.host})
    return out
