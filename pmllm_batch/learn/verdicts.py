"""The person's own verdicts win: where somebody rated a photo, their rating decides where it sorts.

Rule (:func:`verdicts_win`), for one person, over scores on the 1..5 scale (zero-shot or learned):

1. **Unrated** photos (rating 0 or NaN) keep their score.
2. A **rated** photo (1..5 stars, half stars allowed) gets its rating as its score, plus a small tie-break inside
   its level taken from the model: the rated photos of one level are ordered by their input score and spread
   evenly over the open interval ``rating ± h``, ``h = min(TIE_SPREAD, smallest gap between two rating levels
   used) / 2``. So a photo rated higher always sorts strictly above one rated lower (the intervals of two
   levels never touch, also for continuous ratings such as LAPIS's), predicted photos interleave with rated ones on
   the same 1..5 scale (a photo predicted 4.3 sorts between the person's 4-star and 5-star photos), and among
   photos of the same rating the model's order stands.
3. A **rejected** photo (-1) sorts below every photo that is not rejected: rejected photos get
   ``floor - 1 + tie-break`` with ``floor = min(1, lowest score of any photo that is not rejected)``, in the
   model's order among themselves. Their scores fall below the 1..5 scale on purpose: "rejected" is not a
   rating.

The function is pure: the input arrays are not changed, and the same input gives the same output.
"""

from __future__ import annotations

import numpy as np

__all__ = ["REJECTED", "TIE_SPREAD", "verdicts_win"]

REJECTED = -1.0
TIE_SPREAD = 0.2  # rated photos of one level spread over rating ± TIE_SPREAD/2 (less than half a star)


def _spread(scores: np.ndarray, width: float = TIE_SPREAD) -> np.ndarray:
    """Offsets in the open interval (-width/2, width/2), increasing with ``scores`` (ties keep their input order)."""
    n = scores.size
    if n == 0:
        return np.zeros(0)
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n, dtype=np.float64)
    return width * ((ranks + 1.0) / (n + 1.0) - 0.5)


def verdicts_win(scores: object, ratings: object) -> np.ndarray:
    """Final scores in which the person's own ratings decide (module docstring for the rule).

    Args:
        scores: One score per photo (n,), e.g. a :class:`~pmllm_batch.learn.model.TasteState` prediction.
        ratings: The person's rating of each photo (n,): -1 rejected, a value in [1, 5] rated, 0 or NaN unrated.

    Returns:
        New scores (n,), float64: a photo rated higher is never below one rated lower, and a rejected photo is below
        every photo that is not rejected.

    Raises:
        ValueError: different lengths, a non-finite score, or a rating that is none of the above.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    r = np.asarray(ratings, dtype=np.float64).ravel()
    if s.shape != r.shape:
        raise ValueError(f"scores and ratings must have the same length (got {s.size} and {r.size}).")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite.")
    unrated = np.isnan(r) | (r == 0.0)
    rejected = r == REJECTED
    rated = ~unrated & ~rejected
    bad = rated & ~((r >= 1.0) & (r <= 5.0))
    if bad.any():
        raise ValueError(f"ratings must be -1 (rejected), 0 (unrated) or in [1, 5]; got {r[bad][0]!r}.")
    out = s.copy()
    levels = np.unique(r[rated])
    width = min(TIE_SPREAD, float(np.diff(levels).min())) if levels.size > 1 else TIE_SPREAD
    for level in levels:
        idx = np.flatnonzero(rated & (r == level))
        out[idx] = level + _spread(s[idx], width)
    if rejected.any():
        kept = out[~rejected]
        floor = min(1.0, float(kept.min())) if kept.size else 1.0
        idx = np.flatnonzero(rejected)
        out[idx] = floor - 1.0 + _spread(s[idx])
    return out
