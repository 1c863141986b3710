"""The watcher daemon: ``pmllm-batch watch`` keeps every profile's ranking fresh as photos arrive.

* :mod:`pmllm_batch.daemon.watcher`: the watchdog event handler, the path filter and the settle/debounce tracker.
  It only records paths; it never reads a photo or touches the database.
* :mod:`pmllm_batch.daemon.service`: the service loop that turns settled paths into scorer batches, runs the
  periodic reconcile scan, follows profile changes, unloads idle models and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

from pmllm_batch.daemon.service import WatchService
from pmllm_batch.daemon.watcher import PathFilter, PhotoEventHandler, SettleTracker

__all__ = ["PathFilter", "PhotoEventHandler", "SettleTracker", "WatchService"]
