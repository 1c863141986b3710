"""Correlation metrics for zero-shot personalised aesthetics, with pyiqa's names.

``calculate_srcc`` / ``calculate_plcc`` / ``calculate_krcc`` mirror ``pyiqa.metrics.correlation_coefficient``
(SROCC, PLCC with an optional 4-parameter logistic fit, Kendall's tau-b) and agree with
``scipy.stats.spearmanr`` / ``pearsonr`` / ``kendalltau`` wherever those are defined.

Conventions (chosen so that an evaluation loop over hundreds of users never crashes or warns):

* ``pred`` and ``target`` are flattened; their lengths must match (``ValueError`` otherwise).
* Pairs where either value is NaN or infinite are dropped before anything else.
* Fewer than 2 remaining pairs: the coefficient is undefined and ``nan`` is returned.
* A constant ``pred`` or ``target`` (zero variance): the coefficient is mathematically undefined
  (scipy returns ``nan`` with a warning); we return ``0.0`` — "no ranking information" — so that a
  model that outputs one score for every image of a user counts as uninformative, not as missing.

Zero-shot PIAA is reported pooled (all (user, image) pairs together) and per user (one coefficient per
test user, then mean ± std over users); :func:`evaluate_predictions` returns both plus a bootstrap
95% interval of the per-user mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, SupportsFloat, TypedDict

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

if TYPE_CHECKING:
    from pmllm_batch.contracts import JSONDict

__all__ = [
    "bootstrap_ci",
    "calculate_krcc",
    "calculate_plcc",
    "calculate_srcc",
    "evaluate_predictions",
    "PerUserMetrics",
    "UserCorrelation",
    "fit_curve",
    "per_user_metrics",
]



class UserCorrelation(TypedDict):
    """One user's within-user correlations."""

    srocc: float
    plcc: float
    n: int  # finite (prediction, rating) pairs


class PerUserMetrics(TypedDict):
    """:func:`per_user_metrics`: mean ± population std over users, and each user's figures."""

    srocc_mean: float
    srocc_std: float
    plcc_mean: float
    plcc_std: float
    n_users: int
    per_user: dict[Hashable, UserCorrelation]


# Above this many elements per chunk the bootstrap resamples in chunks to bound memory.
_BOOT_CHUNK_ELEMS = 2_000_000


def _clean(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Flatten to float arrays and drop pairs with a non-finite member."""
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(target, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same length (got {p.size} and {t.size}).")
    keep = np.isfinite(p) & np.isfinite(t)
    return p[keep], t[keep]


def _is_constant(x: np.ndarray) -> bool:
    return bool(x.size == 0 or np.all(x == x[0]))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two non-constant vectors (centred dot product; clipped against rounding)."""
    xc = x - x.mean()
    yc = y - y.mean()
    denom = math.sqrt(float(np.dot(xc, xc)) * float(np.dot(yc, yc)))
    if denom == 0.0:
        return 0.0
    return float(np.clip(np.dot(xc, yc) / denom, -1.0, 1.0))


def calculate_srcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Spearman rank-order correlation (SROCC), ties get average ranks as in ``scipy.stats.spearmanr``.

    Args:
        pred: Predicted scores.
        target: Ground-truth scores, same length.

    Returns:
        SROCC in [-1, 1]; ``nan`` for fewer than 2 finite pairs; ``0.0`` if either side is constant.
    """
    p, t = _clean(pred, target)
    if p.size < 2:
        return math.nan
    if _is_constant(p) or _is_constant(t):
        return 0.0
    return _pearson(stats.rankdata(p), stats.rankdata(t))


def _logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    # pyiqa's "logistic4params": (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2
    z = np.clip(-(x - b3) / (abs(b4) + 1e-12), -60.0, 60.0)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def fit_curve(pred: ArrayLike, target: ArrayLike) -> np.ndarray:
    """Map ``pred`` onto ``target``'s scale with a monotonic 4-parameter logistic (VQEG practice, as pyiqa).

    Falls back to the unchanged predictions when the fit does not converge, so PLCC stays defined.

    Args:
        pred: Predicted scores.
        target: Ground-truth scores, same length.

    Returns:
        The fitted predictions (same length as the finite pairs of the input).
    """
    p, t = _clean(pred, target)
    if p.size < 5 or _is_constant(p) or _is_constant(t):
        return p
    init = [float(t.max()), float(t.min()), float(np.mean(p)), float(np.std(p)) or 1.0]
    try:
        with warnings.catch_warnings():
            # An inestimable covariance is irrelevant here: only the fitted curve is used.
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            params, _ = optimize.curve_fit(_logistic4, p, t, p0=init, maxfev=10000)
    except (RuntimeError, ValueError):
        return p
    fitted = _logistic4(p, *params)
    return fitted if np.all(np.isfinite(fitted)) else p


def calculate_plcc(pred: ArrayLike, target: ArrayLike, fit_scale: bool = False) -> float:
    """Pearson linear correlation (PLCC), as ``scipy.stats.pearsonr``.

    Args:
        pred: Predicted scores.
        target: Ground-truth scores, same length.
        fit_scale: First map ``pred`` through a fitted 4-parameter logistic (:func:`fit_curve`), the usual
            IQA practice when a model's scale is not linear in the ratings. Off by default because our
            models already output the 1..5 rating scale.

    Returns:
        PLCC in [-1, 1]; ``nan`` for fewer than 2 finite pairs; ``0.0`` if either side is constant.
    """
    p, t = _clean(pred, target)
    if p.size < 2:
        return math.nan
    if fit_scale:
        p = fit_curve(p, t)
    if _is_constant(p) or _is_constant(t):
        return 0.0
    return _pearson(p, t)


def calculate_krcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Kendall rank correlation (tau-b, which accounts for ties), as ``scipy.stats.kendalltau``.

    Args:
        pred: Predicted scores.
        target: Ground-truth scores, same length.

    Returns:
        KRCC in [-1, 1]; ``nan`` for fewer than 2 finite pairs; ``0.0`` if either side is constant.
    """
    p, t = _clean(pred, target)
    if p.size < 2:
        return math.nan
    if _is_constant(p) or _is_constant(t):
        return 0.0
    return float(stats.kendalltau(p, t).statistic)


def _nanmean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (ddof=0) of the finite values; ``nan`` when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std())


def per_user_metrics(
    pred: ArrayLike, target: ArrayLike, user_ids: Sequence[Hashable], min_items: int = 3
) -> PerUserMetrics:
    """SROCC and PLCC computed within each user, then mean ± std over users.

    Within-user correlation is the zero-shot PIAA question proper: does the model order *this
    person's* photos the way this person does? Users with fewer than ``min_items`` finite pairs are
    left out (a correlation over 2 items is ±1 and says nothing).

    Args:
        pred: Predicted scores.
        target: Ground-truth scores.
        user_ids: The user of each pair, same length.
        min_items: Minimum finite pairs for a user to count.

    Returns:
        ``{"srocc_mean", "srocc_std", "plcc_mean", "plcc_std", "n_users",
        "per_user": {uid: {"srocc", "plcc", "n"}}}``; std is the population std (ddof=0); means are
        ``nan`` when no user qualifies.
    """
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(target, dtype=np.float64).ravel()
    uids = list(user_ids)
    if not (p.size == t.size == len(uids)):
        raise ValueError(f"pred, target and user_ids must have the same length (got {p.size}, {t.size}, {len(uids)}).")
    groups: dict[Hashable, list[int]] = {}
    for i, uid in enumerate(uids):
        groups.setdefault(uid, []).append(i)
    finite = np.isfinite(p) & np.isfinite(t)
    per_user: dict[Hashable, UserCorrelation] = {}
    for uid in sorted(groups, key=str):
        idx = np.asarray(groups[uid])
        idx = idx[finite[idx]]
        if idx.size < max(min_items, 1):
            continue
        per_user[uid] = {
            "srocc": calculate_srcc(p[idx], t[idx]),
            "plcc": calculate_plcc(p[idx], t[idx]),
            "n": int(idx.size),
        }
    s_mean, s_std = _nanmean_std([float(v["srocc"]) for v in per_user.values()])
    p_mean, p_std = _nanmean_std([float(v["plcc"]) for v in per_user.values()])
    return {
        "srocc_mean": s_mean,
        "srocc_std": s_std,
        "plcc_mean": p_mean,
        "plcc_std": p_std,
        "n_users": len(per_user),
        "per_user": per_user,
    }


def bootstrap_ci(
    values: ArrayLike,
    stat: Callable[..., SupportsFloat] = np.mean,  # a number; with ``axis=1``, an array of them
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``stat(values)``.

    Args:
        values: The sample (non-finite entries are dropped), e.g. per-user SROCCs.
        stat: Statistic; called as ``stat(resamples, axis=1)`` when it accepts ``axis`` (fast path),
            otherwise once per resample.
        n_boot: Number of resamples.
        seed: Seed of the resampling generator (same seed → same interval).
        alpha: 1 - confidence level.

    Returns:
        ``(lo, hi)``; ``(nan, nan)`` for an empty sample; ``(v, v)`` for a single value.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        x = float(stat(v))
        return x, x
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_ELEMS // v.size)
    out: list[np.ndarray] = []
    done = 0
    while done < n_boot:
        k = min(chunk, n_boot - done)
        samples = v[rng.integers(0, v.size, size=(k, v.size))]
        try:
            res = np.asarray(stat(samples, axis=1), dtype=np.float64)
            if res.shape != (k,):
                raise TypeError("stat did not reduce along axis 1")
        except TypeError:
            # stat has no usable ``axis``: evaluate it resample by resample.
            res = np.array([float(stat(row)) for row in samples])
        out.append(res)
        done += k
    boots = np.concatenate(out)
    lo, hi = np.quantile(boots, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def evaluate_predictions(
    pred: ArrayLike,
    target: ArrayLike,
    user_ids: Sequence[Hashable],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    min_items: int = 3,
) -> JSONDict:
    """The zero-shot evaluation summary: pooled and per-user correlations.

    Args:
        pred: Predicted scores.
        target: Ground-truth scores.
        user_ids: The user of each pair.
        n_boot: Bootstrap resamples for the per-user SROCC interval.
        seed: Bootstrap seed.
        min_items: Minimum finite pairs for a user to enter the per-user statistics.

    Returns:
        ``{"srocc", "plcc", "krcc", "per_user_srocc_mean", "per_user_srocc_std", "per_user_srocc_ci95": [lo, hi],
        "per_user_plcc_mean", "per_user_plcc_std", "n_users", "n_pairs"}`` — all plain floats/ints, JSON-ready.
    """
    p, t = _clean(pred, target)
    per_user = per_user_metrics(pred, target, user_ids, min_items=min_items)
    user_srocc = [float(v["srocc"]) for v in per_user["per_user"].values()]
    lo, hi = bootstrap_ci(user_srocc, n_boot=n_boot, seed=seed, alpha=0.05)
    return {
        "srocc": calculate_srcc(p, t),
        "plcc": calculate_plcc(p, t),
        "krcc": calculate_krcc(p, t),
        "per_user_srocc_mean": per_user["srocc_mean"],
        "per_user_srocc_std": per_user["srocc_std"],
        "per_user_srocc_ci95": [lo, hi],
        "per_user_plcc_mean": per_user["plcc_mean"],
        "per_user_plcc_std": per_user["plcc_std"],
        "n_users": per_user["n_users"],
        "n_pairs": int(p.size),
    }
