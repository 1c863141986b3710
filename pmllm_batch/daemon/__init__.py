"""The watcher daemon: ``pmllm-batch watch`` keeps every profile's ranking fresh as photos arrive.

* :mod:`pmllm_batch.daemon.watcher`: the watchdog event handler and the settle/debounce tracker. It only records
  paths; it never reads a photo or touches the database. Which paths can be photos is the scanner's rule
  (:class:`pmllm_batch.scan.plan.PathFilter`), handed in through the scorer.
* :mod:`pmllm_batch.daemon.service`: the service loop that turns settled paths into scorer batches, runs the
  periodic reconcile scan, follows profile changes and unloads idle models. Its pieces, one concern each:
  :mod:`~pmllm_batch.daemon.signals` (stop requests; SIGTERM/SIGINT, the grace timer and its SIGUSR1 abort),
  :mod:`~pmllm_batch.daemon.observer` (inotify or polling, health checks, re-watching),
  :mod:`~pmllm_batch.daemon.roots` (absent roots and their back-off), :mod:`~pmllm_batch.daemon.profiles` (which
  profiles, and what changed), :mod:`~pmllm_batch.daemon.batching` (folder events, moves, ``--once``'s wait for
  settling files), :mod:`~pmllm_batch.daemon.batchlog` (the per-batch log line and the run totals) and
  :mod:`~pmllm_batch.daemon.sidecars` (``[learn] xmp_profile``: a changed XMP sidecar is the person's new rating;
  ``[xmp] profile``: our sidecars kept fresh).
"""

from __future__ import annotations

from pmllm_batch.daemon.service import WatchService
from pmllm_batch.daemon.watcher import PhotoEventHandler, SettleTracker

__all__ = ["PhotoEventHandler", "SettleTracker", "WatchService"]
