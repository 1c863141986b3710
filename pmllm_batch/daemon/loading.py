"""Saying what a model load is for, before it starts, and ``[watch] preload``.

The load's own line ("loaded smol ... in 17.0s") comes only once it is done; without this, a first photo would meet a
silent log for as long as the load takes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pmllm_batch.log import get_logger
from pmllm_batch.scorer import ModelCache, RunSummary
from pmllm_batch.scorer.summary import plural

log = get_logger("daemon")

__all__ = ["LoadAnnouncer"]


class LoadAnnouncer:
    """Hooked into :attr:`ModelCache.on_load`: logs which model loads, for what (:meth:`doing`), and why we wait."""

    def __init__(self, models: ModelCache, preset: str) -> None:
        self.models = models
        self.name = Path(preset).stem if preset.endswith(".json") else preset
        self._doing: Callable[[], str] = lambda: "the work at hand"  # what a model load now would be for
        self._loaded_before = False
        models.on_load = self.say_loading

    def doing(self, what: Callable[[], str]) -> None:
        """What a load from now on would be for (called lazily, only when a load happens)."""
        self._doing = what

    def for_scan(self, reason: str, summary: RunSummary) -> None:
        """A load from now on is for a reconcile scan; by the time it starts, ``summary`` counts what the scan
        reads."""
        scan = f"the {reason}" if reason in ("initial scan", "one-off scan") else f"the rescan ({reason})"

        def doing() -> str:
            todo = summary.new + summary.changed
            profiles = plural(summary.profiles, "profile")
            what = plural(todo, "new or changed photo") if todo else f"scores missing for {profiles}"
            return f"for {scan} ({what})"

        self._doing = doing

    def for_batch(self, number: int, waiting: int) -> None:
        """A load from now on is for event batch ``number`` with ``waiting`` photos."""
        this = "the first batch" if number == 1 else f"batch {number}"
        self._doing = lambda: f"for {this} ({plural(waiting, 'photo')} waiting)"

    def say_loading(self) -> None:
        if self._loaded_before:
            idle = self.models.idle_s
            after = f" after {idle:g}s without work" if idle is not None else ""
            log.info("loading the %s model again %s; it was unloaded%s", self.name, self._doing(), after)
        else:
            log.info("loading the %s model %s; this takes a while the first time", self.name, self._doing())
        self._loaded_before = True

    def preload(self) -> None:
        """``[watch] preload``: load the models now, so the first photo does not wait for them."""
        self._doing = lambda: "at start ([watch] preload = true)"
        self.models.get()
        self.models.touch()  # idle counts from the end of the load
