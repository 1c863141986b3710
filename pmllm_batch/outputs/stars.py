"""Stars from a person's ranking: 1-5 by rank percentile, with configurable shares (``[xmp] stars_5 … stars_1``).

Rounding a score to stars would give most photos the same 3 stars (scores bunch in the middle); a fixed spread such as
10/20/40/20/10 % suits culling: the best tenth of the library is always 5 stars, the worst tenth always 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from pmllm_batch.db import RankedPhoto

DEFAULT_SHARES = (10.0, 20.0, 40.0, 20.0, 10.0)  # percent for 5, 4, 3, 2, 1 stars


def star_label(stars: int) -> str:
    """``"1 star"``, ``"4 stars"``."""
    return f"{stars} star" if stars == 1 else f"{stars} stars"


def stars_for_position(position: int, total: int, shares: Sequence[float] = DEFAULT_SHARES) -> int:
    """Stars for the photo at 0-based ``position`` of a ranking of ``total`` photos.

    The photo's rank percentile is the middle of its slot, ``100 * (position + 0.5) / total``; below ``shares[0]``
    gives 5 stars, below ``shares[0] + shares[1]`` 4 stars, and so on (so 10 photos with 10/20/40/20/10 get exactly
    1, 2, 4, 2 and 1 photos with 5 … 1 stars). The best photo always gets the top stars (5, unless ``shares[0]`` is
    0), however short the ranking.

    Args:
        position: 0-based position in the ranking (best first).
        total: Length of the ranking (>= 1).
        shares: Percent of the ranking for 5, 4, 3, 2 and 1 stars (adding up to 100).
    """
    if total < 1 or not 0 <= position < total:
        raise ValueError(f"position {position} is outside a ranking of {total}")
    percentile = 100.0 * (position + 0.5) / total
    cumulative = 0.0
    for i, share in enumerate(shares):
        cumulative += share
        if share > 0 and (position == 0 or percentile < cumulative - 1e-9):
            return 5 - i
    return 1


def stars_by_hash(ranking: Sequence[RankedPhoto], shares: Sequence[float] = DEFAULT_SHARES) -> dict[str, int]:
    """Content hash -> stars for a whole ranking (best first, as :meth:`Store.ranking` returns it).

    Photos with exactly the same score share the stars of the best-placed one, so a tie never splits across a cut.
    """
    out: dict[str, int] = {}
    total = len(ranking)
    first_of_tie = 0
    for i, item in enumerate(ranking):
        if i == 0 or item.score != ranking[i - 1].score:
            first_of_tie = i
        out[item.content_hash] = stars_for_position(first_of_tie, total, shares)
    return out
