"""Row-to-record conversions and names that need no SQLAlchemy.

The table modules (:mod:`~pmllm_batch.db.models`, :mod:`~pmllm_batch.db.runs`) and the quick read path
(:mod:`~pmllm_batch.db.quick`) share them, so ``status`` gives the same records whichever path read the rows.
Importing this module imports no SQLAlchemy: keep it that way (``status`` and ``profile list`` start-up time).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime
from typing import NamedTuple

from pmllm_batch.db.records import ModelInfo, RunInfo

__all__ = ["RunRow", "abandoned", "iso", "model_info", "model_label", "model_meta", "model_settings", "run_info",
           "settings_label"]

# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


def model_meta(meta_json: str | None) -> dict[str, object]:
    """A model row's meta JSON as a dict ({} when it is empty or not a JSON object)."""
    try:
        data = json.loads(meta_json or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def model_settings(meta_data: Mapping[str, object]) -> dict[str, str]:
    """The settings that rebuild a model, from its meta ({} when none were stored)."""
    stored = meta_data.get("settings")
    if not isinstance(stored, dict):
        return {}
    return {str(k): str(v) for k, v in stored.items() if isinstance(v, (str, int, float, bool))}


def model_info(model_id: int, fingerprint: str, preset: str, meta_data: Mapping[str, object]) -> ModelInfo:
    """A model row as :class:`ModelInfo`."""
    # The demo flag as the scorer recorded it ({"demo": …} in the model's facts); rows from before it was recorded
    # only had the preset to tell, and the one demo preset then was "demo".
    flag = meta_data.get("demo")
    demo = flag if isinstance(flag, bool) else preset == "demo"
    note = meta_data.get("note")
    return {"id": model_id, "fingerprint": fingerprint, "preset": preset, "demo": demo,
            "note": note if isinstance(note, str) else "", "settings": model_settings(meta_data)}


def settings_label(stored: Mapping[str, str]) -> str:
    """A model's name for sentences, from its settings: its preset (a preset file by its file name), with its adapter
    and int8 LLM when set ("demo with the adapter /x/adapter")."""
    preset = str(stored.get("preset") or "")
    name = preset.rsplit("/", 1)[-1] if "/" in preset or preset.endswith(".json") else preset
    checkpoint = str(stored.get("checkpoint") or "")
    if checkpoint == "none":
        name += " with an untrained adapter"
    elif checkpoint:
        name += f" with the adapter {checkpoint}"
    if str(stored.get("quantize") or "none") != "none":
        name += f" ({stored['quantize']} LLM)"
    return name


def model_label(model: ModelInfo) -> str:
    """A registered model's name for sentences: ``smol (fingerprint 0123456789ab)``."""
    name = settings_label(model["settings"]) if model.get("settings") else model["preset"]
    return f"{name} (fingerprint {model['fingerprint'][:12]})"


# ---------------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------------

_GONE = "its process ({pid}) ended without closing the run (killed, crashed or the machine stopped)"


class RunRow(NamedTuple):
    """The columns of a ``runs`` row (times as naive UTC datetimes)."""

    id: int
    kind: str
    status: str
    pid: int | None
    host: str | None
    started_at: datetime | None
    finished_at: datetime | None
    args_json: str | None
    summary_json: str | None


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (signal 0 checks without sending anything)."""
    if os.name != "posix":
        return True  # Windows' os.kill has no probe signal (0 is CTRL_C_EVENT): never guess there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists but belongs to someone else, or the platform cannot tell: assume alive
    return True


def abandoned(status: str, run_host: str | None, pid: int | None, host: str) -> str | None:
    """Why a "running" row can no longer be running (its process on this host, ``host``, is gone), or None."""
    if status == "running" and run_host == host and pid is not None and not _process_alive(pid):
        return _GONE.format(pid=pid)
    return None


def iso(value: datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 text with a "Z", to the second; None stays None."""
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


def run_info(run: RunRow, host: str) -> RunInfo:
    """A run as ``status`` shows it; an abandoned one (see :func:`abandoned`) reads as interrupted."""
    status, summary = run.status, json.loads(run.summary_json) if run.summary_json else None
    if reason := abandoned(run.status, run.host, run.pid, host):  # reported only; the next run on this host records it
        status, summary = "interrupted", {"reason": reason}
    return {
        "id": run.id,
        "kind": run.kind,
        "status": status,
        "pid": run.pid,
        "host": run.host,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "args": json.loads(run.args_json) if run.args_json else {},
        "summary": summary,
    }
