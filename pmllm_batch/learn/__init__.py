"""Learn each person's taste from their own stars: zero-shot first, sharper with every rating.

Layer: ground (``config``, ``contracts``, ``errors``, ``log``) and numpy only. Everything here works on arrays —
per-photo features, zero-shot scores, ratings — so the library side (db, scorer) and the benchmark
(:mod:`pmllm_batch.train.fewshot`) use the same code.

The pieces
----------
* :class:`FeatureSpec` (``features.py``): raw per-photo features (the vision tower's, mean-pooled over patches:
  :func:`mean_pool`) → ``phi``: standardised, PCA-reduced to at most :data:`DEFAULT_DIM` dimensions. Fitted once on
  a set of photos (no ratings needed), then frozen.
* :func:`fit_taste` (``model.py``): one person's rated photos (``phi``, zero-shot scores ``s0``, stars) →
  :class:`TasteState`, whose :meth:`TasteState.predict` gives personal scores for any photos. With no ratings the
  prediction *is* ``s0`` (a copy, bit for bit).
* :class:`LearnerConfig`: the design (``method``) and how its prior strength λ is chosen (``rule``);
  :func:`calibrate` fixes λ once from a training population's ratings (empirical Bayes).
* :func:`verdicts_win` (``verdicts.py``): final scores where the person's own ratings decide the order of the
  photos they rated; a rejected photo sorts below everything else.
* :func:`learn_rerank_seconds` (``timing.py``): one new rating → fit → new order of a 20,000-photo library.

Typical use (the library side)::

    spec = FeatureSpec.fit(library_features, source=vision_graph_id)      # once per library
    phi = spec.transform(library_features)                                 # kept in memory
    state = fit_taste(phi[rated], s0[rated], stars[rated], spec=spec, model_fingerprint=fp, config=cfg)
    store(json.dumps(state.to_dict()))                                     # versioned by fp
    order = np.argsort(-verdicts_win(state.predict(phi, s0), stars_of_every_photo))

The designs compared (``pmllm-batch eval --shots --compare``; figures in :mod:`pmllm_batch.train.fewshot`):
``residual`` with λ from :func:`calibrate` (recommended: the zero-shot score as the prior mean, a ridge
correction on ``phi``), the same with λ chosen per person by evidence, ``stars_only`` (the same ridge without the
zero-shot prior: the baseline) and ``kernel`` (the residual model with an RBF Gaussian-process correction).
Store the calibrated :class:`LearnerConfig` (``fewshot.json``'s ``learners.learner``) with the model it was
calibrated for: λ belongs to a model's features.
"""

from pmllm_batch.learn.features import DEFAULT_DIM, FeatureSpec, mean_pool
from pmllm_batch.learn.model import (
    CALIBRATION_GRID,
    DEFAULT_GRID,
    METHODS,
    RULES,
    LearnerConfig,
    TasteState,
    calibrate,
    fit_taste,
    rating_targets,
)
from pmllm_batch.learn.timing import learn_rerank_seconds
from pmllm_batch.learn.verdicts import TIE_SPREAD, verdicts_win

__all__ = [
    "CALIBRATION_GRID",
    "DEFAULT_DIM",
    "DEFAULT_GRID",
    "METHODS",
    "RULES",
    "TIE_SPREAD",
    "FeatureSpec",
    "LearnerConfig",
    "TasteState",
    "calibrate",
    "fit_taste",
    "learn_rerank_seconds",
    "mean_pool",
    "rating_targets",
    "verdicts_win",
]
