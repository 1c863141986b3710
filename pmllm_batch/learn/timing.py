"""How long one new rating takes to reach a whole library's ranking (for ``bench``): fit, score, verdicts, sort."""

from __future__ import annotations

import time

import numpy as np

from pmllm_batch.learn.features import FeatureSpec
from pmllm_batch.learn.model import LearnerConfig, fit_taste
from pmllm_batch.learn.verdicts import verdicts_win

__all__ = ["learn_rerank_seconds"]


def learn_rerank_seconds(
    n: int = 20000,
    dim: int = 64,
    *,
    d_in: int | None = None,
    n_rated: int = 50,
    repeats: int = 3,
    seed: int = 0,
    config: LearnerConfig | None = None,
    include_transform: bool = False,
) -> float:
    """Seconds from "one more rating" to the new order of ``n`` photos whose features are in memory.

    Synthetic features and zero-shot scores stand in for a library (the cost does not depend on the values). The
    feature spec is fitted and the library's features transformed once beforehand, as a library does when its
    photos are scored; each timed cycle then adds one rating to ``n_rated`` earlier ones and runs
    :func:`~pmllm_batch.learn.model.fit_taste` on them, predicts all ``n`` photos, applies
    :func:`~pmllm_batch.learn.verdicts.verdicts_win` and sorts. ``include_transform`` adds the transform of all
    ``n`` raw feature rows to each cycle.

    BLAS may use several threads; for a one-core figure run with ``OMP_NUM_THREADS=1`` (or the BLAS's own variable).

    Args:
        n: Photos in the library.
        dim: Feature dimensions after the spec (PCA).
        d_in: Raw feature width (default ``dim``).
        n_rated: Ratings before the new one.
        repeats: Timed cycles; the median is returned.
        seed: Seed of the stand-in data.
        config: The learner (default :class:`LearnerConfig`).
        include_transform: Also time ``spec.transform`` of all ``n`` photos per cycle.

    Returns:
        The median wall time of one cycle, in seconds.
    """
    if n < 2 or dim < 1 or n_rated < 0 or repeats < 1:
        raise ValueError("need n >= 2, dim >= 1, n_rated >= 0 and repeats >= 1.")
    rng = np.random.default_rng(seed)
    width = d_in or dim
    raw = rng.standard_normal((n, width)).astype(np.float32)
    s0 = 3.0 + 0.6 * rng.standard_normal(n)
    spec = FeatureSpec.fit(raw[: min(n, 5000)], dim=min(dim, width), source="timing")
    phi = spec.transform(raw)
    ratings = np.zeros(n)
    rated = rng.choice(n, size=min(n, n_rated + repeats), replace=False)
    ratings[rated] = rng.integers(1, 6, size=rated.size)
    times = []
    for i in range(repeats):
        idx = rated[: n_rated + i + 1]
        start = time.perf_counter()
        feats = spec.transform(raw) if include_transform else phi
        state = fit_taste(feats[idx], s0[idx], ratings[idx], spec=spec, model_fingerprint="timing", config=config)
        order = np.argsort(-verdicts_win(state.predict(feats, s0), ratings), kind="stable")
        times.append(time.perf_counter() - start)
        assert order.size == n
    return float(np.median(times))
