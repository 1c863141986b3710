"""Files that are photos but are not ranked: stored with status ``skipped`` and a reason (never scored).

The reasons are :class:`~pmllm_batch.contracts.SkipReason` members:

* ``SkipReason.TOO_SMALL``: the shorter side is below ``[scan] min_side`` (an icon, a 10x15 tracking pixel): nothing
  to judge.
* ``SkipReason.RAW_PAIR``: a camera RAW whose JPEG twin (same folder, same stem) is in the library: the pair is one
  photo, ranked by the JPEG's pixels (:mod:`pmllm_batch.scan.raw`).
* ``SkipReason.BLANK``: near-uniform pixels (the lens cap was on, a misfire, an all-white or all-grey frame): the
  spread of its luminance (:func:`luminance_spread`) is below ``[scan] blank_std``. Nothing to judge, and a model
  would still give it a score (a uniform grey frame got 5 stars).

A skipped row is re-read when its file changes, and the scan re-plans it when the reason no longer holds (the twin
left or failed, ``min_side`` changed, ``blank_std`` fell below the spread stored in its message), so it never stays
skipped for a stale reason. Raising ``blank_std`` applies to files read from then on: an ok row stores no spread.

The blank rule: the decoded, upright image (before any preprocessing) is shrunk by box averaging to about
:data:`BLANK_SIDE` pixels on its shorter side, turned into luminance (PIL's ``L``, 0-255), and its standard deviation
taken. Averaging blocks of pixels removes sensor noise (a black frame shot at high ISO is noisy pixel by pixel, flat
block by block) while real structure survives; the default threshold 2.0 is about the spread of a brightness ramp of
7 levels across the whole frame, far below fog, haze, a clear sky or a night shot with one light in it (> 4).
"""

from __future__ import annotations

import re

from PIL import Image

__all__ = ["BLANK_SIDE", "blank", "blank_spread", "luminance_spread", "raw_pair_message", "too_small"]

#: Shorter side, in pixels, of the shrunk copy whose luminance spread decides "blank".
BLANK_SIDE = 64

_SPREAD_RE = re.compile(r"luminance spread ([0-9]+(?:\.[0-9]+)?) of 255")


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


def luminance_spread(image: Image.Image) -> float:
    """Standard deviation (0-255) of the luminance of ``image`` shrunk to about :data:`BLANK_SIDE` pixels on its
    shorter side by box averaging (integer factor, so every pixel counts once). object mode: palette, 16-bit, CMYK …
    images are first converted to RGB the way the vision preprocessing converts them."""
    import numpy as np

    img = image if image.mode in ("L", "LA", "RGB", "RGBA") else image.convert("RGB")
    factor = max(1, min(img.size) // BLANK_SIDE)
    if factor > 1:
        img = img.reduce(factor)
    luma = np.asarray(img.convert("L"), dtype=np.float64)
    return float(luma.std()) if luma.size else 0.0


def blank(image: Image.Image, threshold: float) -> str | None:
    """The sentence for a blank frame (luminance spread below ``threshold``); None when it has something to judge
    or ``threshold`` is 0."""
    if threshold <= 0:
        return None
    spread = round(luminance_spread(image), 2)  # as the message stores it, so re-planning decides the same way
    if spread >= threshold:
        return None
    return (f"the frame is blank: luminance spread {spread:.2f} of 255, below [scan] blank_std = {threshold:g} "
            "(lens cap, misfire or an empty frame)")


def blank_spread(message: str | None) -> float | None:
    """The spread a ``blank`` row's message recorded (for re-planning when ``blank_std`` changes); None if absent."""
    match = _SPREAD_RE.search(message or "")
    return float(match.group(1)) if match else None
