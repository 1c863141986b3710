"""Files that are photos but are not ranked: stored with status ``skipped`` and a reason (never scored).

The reasons are :class:`~pmllm_batch.contracts.SkipReason` members:

* ``SkipReason.TOO_SMALL``: the shorter side is below ``[scan] min_side`` (an icon, a 10x15 tracking pixel): nothing
  to judge.
* ``SkipReason.RAW_PAIR``: a camera RAW whose JPEG twin (same folder, same stem) is in the library: the pair is one
  photo, ranked by the JPEG's pixels (:mod:`pmllm_batch.scan.raw`).

A skipped row is re-read when its file changes, and the scan re-plans it when the reason no longer holds (the twin
left or failed, ``min_side`` changed), so it never stays skipped for a stale reason.
"""

from __future__ import annotations

__all__ = ["raw_pair_message", "too_small"]


def too_small(width: int | None, height: int | None, min_side: int) -> str | None:
    """The sentence for a photo whose shorter side is below ``min_side`` pixels; None when it is large enough."""
    if not min_side or width is None or height is None:
        return None
    if min(width, height) >= min_side:
        return None
    return f"the photo is {width}x{height} pixels, smaller than [scan] min_side = {min_side} on its shorter side"


def raw_pair_message(twin: str) -> str:
    """The sentence on a RAW row that is ranked as its JPEG twin."""
    return f"RAW+JPEG pair: ranked as its twin {twin}"
