"""The watcher daemon: ``pmllm-batch watch`` keeps every profile's ranking fresh as photos arrive.

* :mod:`pmllm_batch.daemon.watcher`: the watchdog event handler and the settle/debounce tracker. It only records
  paths; it never reads a photo or touches the database. Which paths can be photos is the scanner's rule
  (:class:`pmllm_batch.scan.plan.PathFilter`), handed in through the scorer.
* :mod:`pmllm_batch.daemon.service`: the service loop that turns settled paths into scorer batches, runs the
  periodic reconcile scan, follows profile changes, unloads idle models and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

from pmllm_batch.daemon.service import WatchService
from pmllm_batch.daemon.watcher import PhotoEventHandler, SettleTracker

__all__ = ["PhotoEventHandler", "SettleTracker", "WatchService"]
