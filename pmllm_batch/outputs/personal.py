"""Each person's ranking as every output shows it: the profile's (zero-shot) ranking, sharpened by their own stars.

:func:`personal_ranking` is what :class:`~pmllm_batch.outputs.bursts.RankingView` (and so ``rank``, ``export``,
``albums``, ``report`` and ``xmp``) reads instead of :meth:`Store.ranking <pmllm_batch.db.store.Store.ranking>`:

* **no ratings** (or ``zero_shot=True``, ``rank --zero-shot``, or ``[learn] enabled = false``): the rows *are*
  ``Store.ranking``'s, same order, same scores — the profile-only ranking;
* **with ratings** of photos in the ranking: a per-person learner (:mod:`pmllm_batch.learn`: the residual ridge with
  the zero-shot score as its prior mean, ``[learn] method``, λ = ``[learn] lam``) corrects every photo's score from
  what the person rated, then the person's own verdicts win (:func:`~pmllm_batch.learn.verdicts_win`): a photo they
  rated higher is never below one they rated lower, and a rejected photo sorts below everything. The rows are
  re-sorted (ties by path, as ``Store.ranking``) and numbered 1..n; ``score`` is the learned score.

The learner's features are the pooled, unit-length visual embeddings the scorer stores for every encoded photo
(``photo_embeddings``, never evicted, :mod:`pmllm_batch.db.links`), standardised and PCA-reduced to at most
``[learn] dim`` dimensions by a :class:`~pmllm_batch.learn.FeatureSpec` fitted on the embeddings of the person's
ranked photos (no rating is read to fit it; at most :data:`SPEC_SAMPLE` of them, evenly spread by content hash).
**A photo without an embedding** (scored before embeddings were stored, or under a model whose vision graph is not
recorded) **gets phi = 0, the spec's mean**: the learner moves it by its zero-shot score alone. With fewer than two
embedded photos there is nothing to learn from: the verdicts alone re-order the profile's ranking.

The fitted state is stored in the ``tastes`` table, one row per (profile, model) — the state names the model's
fingerprint — with a digest of what it was fitted on (:func:`taste_digest`: the ratings, the rated photos' zero-shot
scores and whether they have an embedding, the spec's photos and vision graph, the learn settings). A later call
with the same digest reuses it (no fit); a changed digest refits, keeping the stored feature spec when only the
ratings changed (the spec's own digest, stored beside the state under ``"library"``, still matches).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pmllm_batch.config import LearnSettings
from pmllm_batch.contracts import PROFILE_ONLY, JSONDict, learned_text
from pmllm_batch.learn import FeatureSpec, LearnerConfig, TasteState, fit_taste, verdicts_win
from pmllm_batch.log import get_logger

if TYPE_CHECKING:  # the database (SQLAlchemy) loads with the Store a caller hands in, not with this module
    from pmllm_batch.db import RankedPhoto, Store
    from pmllm_batch.db.ratings import StoredTaste

__all__ = [
    "PROFILE_ONLY",
    "SPEC_SAMPLE",
    "Learned",
    "RatingCounts",
    "learned_summary",
    "learned_text",
    "personal_ranking",
    "personalize",
    "taste_digest",
]

log = get_logger("outputs.personal")

SPEC_SAMPLE = 5000  # at most this many photos' embeddings fit the feature spec (evenly spread by content hash)
FEATURE_KIND = "photo-embedding"  # FeatureSpec.kind: the pooled, unit-length embeddings of photo_embeddings
DIGEST_VERSION = 1
REJECTED = -1


@dataclass(frozen=True)
class Learned:
    """What a person's ranking learned from.

    Attributes:
        profile: Whose ranking.
        n_ratings: Their ratings of photos in this ranking (all of them count; 0 in a profile-only ranking).
        zero_shot: The rows are the profile-only ranking (``Store.ranking``'s, unchanged).
        features: A taste was learned over photo features (False with ratings: no embeddings to learn from; the
            person's verdicts alone re-ordered the ranking).
        refitted: The taste was fitted by this call (False: the stored one was reused, or none was needed).
        verdicts: Content hash -> the person's stars (-1 rejected, 1..5) for the rated photos of this ranking.
    """

    profile: str
    n_ratings: int = 0
    zero_shot: bool = True
    features: bool = False
    refitted: bool = False
    verdicts: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def ranking(self) -> str:
        """``"learned"`` or ``"profile only"`` (the JSON outputs' ``ranking`` field)."""
        return PROFILE_ONLY if self.zero_shot else "learned"

    @property
    def learned_from(self) -> int:
        """Ratings this ranking follows (0: profile only; the JSON outputs' ``learned_from`` field)."""
        return 0 if self.zero_shot else self.n_ratings

    @property
    def rejected(self) -> frozenset[str]:
        """Content hashes the person rejected: never in their top, albums or 5-star shelf."""
        return frozenset(h for h, stars in self.verdicts.items() if stars == REJECTED)

    def describe(self) -> str:
        """``"learned from 3 of your ratings"``, ``"learned from 1 of your ratings"`` or ``"profile only"``."""
        if self.zero_shot:
            return PROFILE_ONLY
        if not self.features:
            return f"ordered by {self.n_ratings} of your ratings (no photo features to learn from yet)"
        return learned_text(self.n_ratings)


def personal_ranking(
    store: Store,
    profile: str,
    *,
    model_id: int | None = None,
    learn: LearnSettings = LearnSettings(),  # frozen, never mutated
    zero_shot: bool = False,
) -> tuple[list[RankedPhoto], Learned]:
    """A person's whole ranking, learned from their own stars (module docstring), and what it learned from.

    Args:
        store: The library database (the ``tastes`` table is written when a taste is fitted).
        profile: A stored profile.
        model_id: Whose zero-shot scores (default: the library's model).
        learn: ``[learn]`` settings (``enabled``, ``method``, ``lam``, ``dim``).
        zero_shot: The profile-only ranking, whatever the person rated (``rank --zero-shot``).

    Returns:
        (rows best first, ranks 1..n; :class:`Learned`). Without ratings (or ``zero_shot``, or learning disabled)
        the rows are exactly ``store.ranking(profile, model_id=model_id)``.

    Raises:
        ProfileError: Unknown profile.
    """
    base = store.ranking(profile, model_id=model_id)
    return personalize(store, profile, base, model_id=model_id, learn=learn, zero_shot=zero_shot)


def personalize(
    store: Store,
    profile: str,
    base: Sequence[RankedPhoto],
    *,
    model_id: int | None = None,
    learn: LearnSettings = LearnSettings(),  # frozen, never mutated
    zero_shot: bool = False,
) -> tuple[list[RankedPhoto], Learned]:
    """:func:`personal_ranking` of an already read ``base`` (``store.ranking(profile, model_id=model_id)``), for a
    caller that keeps both (the view compares them: what the stars changed)."""
    rows = list(base)
    if zero_shot or not learn.enabled or not rows:
        return rows, Learned(profile)
    index = {r.content_hash: i for i, r in enumerate(rows)}
    verdicts = {h: r.stars for h, r in store.ratings(profile).items() if h in index}
    if not verdicts:
        return rows, Learned(profile)
    mid = model_id if model_id is not None else store.current_model_id()
    info = store.model(mid) if mid is not None else None
    s0 = np.fromiter((r.score for r in rows), dtype=np.float64, count=len(rows))
    stars = np.zeros(len(rows))
    for h, value in verdicts.items():
        stars[index[h]] = value
    hashes = [r.content_hash for r in rows]
    taste: _Taste | None = None
    if mid is not None and info is not None:
        taste = _taste(store, profile, mid, info["fingerprint"], hashes, s0, stars, learn)
    predicted = taste.state.predict(taste.phi, s0) if taste is not None else s0
    final = verdicts_win(predicted, stars)
    ranked = [_with_score(r, v) for r, v in zip(rows, final.tolist(), strict=True)]
    ranked.sort(key=lambda r: (-r.score, r.path))
    for i, r in enumerate(ranked, start=1):  # fresh objects, made above: numbered in place
        r.rank = i
    learned = Learned(profile, n_ratings=len(verdicts), zero_shot=False, features=taste is not None,
                      refitted=taste is not None and taste.refitted, verdicts=verdicts)
    return ranked, learned


def _with_score(row: RankedPhoto, score: float) -> RankedPhoto:
    """A copy of ``row`` with another score (``dataclasses.replace`` costs ~50 µs a row: a second on 20,000)."""
    new = object.__new__(type(row))
    new.__dict__.update(row.__dict__)
    new.score = float(score)
    return new


# ---------------------------------------------------------------------------------------------------------------------
# The taste: features, digest, stored state
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Taste:
    state: TasteState
    phi: np.ndarray  # (n, spec.dim): every photo of the ranking, zeros where it has no embedding
    refitted: bool


@dataclass
class _Features:
    vision_id: str
    raw: np.ndarray  # (m, d_in): the embeddings of the photos that have one, in ranking order
    present: np.ndarray  # (n,) bool: which photos of the ranking have one
    spec_digest: str


def _features(store: Store, model_id: int, hashes: Sequence[str], dim: int) -> _Features | None:
    """The ranking's embeddings under the model's vision graph (one query), or None with fewer than two."""
    vision_id = store.vision_id_of(model_id)
    if vision_id is None:
        return None
    stored, matrix = store.embedding_matrix(vision_id)
    where = {h: i for i, h in enumerate(stored)}
    rows = np.fromiter((where.get(h, -1) for h in hashes), dtype=np.int64, count=len(hashes))
    present = rows >= 0
    if int(present.sum()) < 2:
        return None
    digest = hashlib.sha256(f"{DIGEST_VERSION} {vision_id} {dim} {SPEC_SAMPLE}".encode())
    for h in sorted(h for h, ok in zip(hashes, present.tolist(), strict=True) if ok):
        digest.update(h.encode() + b"\n")
    return _Features(vision_id, matrix[rows[present]], present, digest.hexdigest())


def taste_digest(
    fingerprint: str, spec_digest: str, learn: LearnSettings, rated: Mapping[str, tuple[int, float, bool]]
) -> str:
    """What a stored taste was fitted on, as a sha256 hex digest (64 characters).

    Args:
        fingerprint: The model whose zero-shot scores the taste corrects.
        spec_digest: The feature spec's photos, vision graph and width.
        learn: The learn settings (method, lam, dim).
        rated: Content hash -> (stars, zero-shot score, has an embedding) of every rated photo.
    """
    head = {"v": DIGEST_VERSION, "model": fingerprint, "spec": spec_digest, "method": learn.method,
            "lam": float(learn.lam), "dim": int(learn.dim)}
    digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for h in sorted(rated):
        stars, score, has = rated[h]
        digest.update(f"\n{h} {int(stars)} {float(score)!r} {int(has)}".encode())
    return digest.hexdigest()


def _taste(
    store: Store, profile: str, model_id: int, fingerprint: str, hashes: Sequence[str], s0: np.ndarray,
    stars: np.ndarray, learn: LearnSettings,
) -> _Taste | None:
    """The person's taste for this ranking: the stored one when its digest matches, else fitted (and stored)."""
    from pmllm_batch.db.ratings import StoredTaste

    feats = _features(store, model_id, hashes, learn.dim)
    if feats is None:
        return None
    rated = np.flatnonzero(stars != 0)
    digest = taste_digest(fingerprint, feats.spec_digest, learn,
                          {hashes[i]: (int(stars[i]), float(s0[i]), bool(feats.present[i])) for i in rated.tolist()})
    stored = store.taste(profile, model_id)
    old = _load(stored)
    if stored is not None and old is not None and stored.ratings_digest == digest:
        return _Taste(old[0], _phi(old[0].spec, feats), refitted=False)
    spec = old[0].spec if old is not None and old[1] == feats.spec_digest else _fit_spec(feats, hashes, learn.dim)
    phi = _phi(spec, feats)
    config = LearnerConfig(method=learn.method, rule="fixed", lam=float(learn.lam), guard=False)
    state = fit_taste(phi[rated], s0[rated], stars[rated], spec=spec, model_fingerprint=fingerprint, config=config)
    data: JSONDict = dict(state.to_dict())
    data["library"] = {"spec_digest": feats.spec_digest, "vision_id": feats.vision_id,
                       "photos": int(feats.present.sum())}
    store.put_taste(profile, model_id, StoredTaste(digest, int(rated.size), json.dumps(data)))
    log.debug("%s: taste fitted on %d ratings (model %s)", profile, rated.size, fingerprint)
    return _Taste(state, phi, refitted=True)


def _load(stored: StoredTaste | None) -> tuple[TasteState, str] | None:
    """(state, its spec's digest) of a stored taste; None when there is none or it cannot be read (refit)."""
    if stored is None:
        return None
    try:
        data = json.loads(stored.state_json)
        library = data.get("library") or {}
        return TasteState.from_dict(data), str(library.get("spec_digest", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _fit_spec(feats: _Features, hashes: Sequence[str], dim: int) -> FeatureSpec:
    """A feature spec fitted on at most :data:`SPEC_SAMPLE` embedded photos, evenly spread by content hash."""
    embedded = [h for h, ok in zip(hashes, feats.present.tolist(), strict=True) if ok]
    order = sorted(range(len(embedded)), key=embedded.__getitem__)
    if len(order) > SPEC_SAMPLE:
        order = [order[int(i)] for i in np.linspace(0, len(order) - 1, SPEC_SAMPLE).round().astype(int)]
    return FeatureSpec.fit(feats.raw[order], dim=dim, kind=FEATURE_KIND, source=feats.vision_id)


def _phi(spec: FeatureSpec, feats: _Features) -> np.ndarray:
    """phi of every photo of the ranking: the spec's transform, 0 (the spec's mean) where there is no embedding."""
    phi = np.zeros((feats.present.shape[0], spec.dim))
    if feats.raw.shape[1] == spec.d_in:
        phi[feats.present] = spec.transform(feats.raw)
    return phi


# ---------------------------------------------------------------------------------------------------------------------
# For status
# ---------------------------------------------------------------------------------------------------------------------


class RatingCounts(Protocol):
    """What :func:`learned_summary` reads: :meth:`Store.rating_counts <pmllm_batch.db.store.Store.rating_counts>`
    (a quick reader without SQLAlchemy may offer the same method)."""

    def rating_counts(self, *, in_library: bool = False) -> dict[str, dict[str, int]]: ...


def learned_summary(store: RatingCounts, learn: LearnSettings = LearnSettings()) -> dict[str, int]:
    """Profile name -> how many of the person's ratings their ranking learns from (0: profile only), for ``status``.

    Counts the ratings of content an ok photo of the library still has (cheap: one grouped query, no ranking is
    read); a ranking learns from those of them its model scored. Every stored profile appears; all 0 when
    ``[learn] enabled`` is false. Say it with :func:`learned_text` (``"ana: learned from 3 of your ratings"``).
    """
    counts = store.rating_counts(in_library=True)
    return {name: (sum(by_source.values()) if learn.enabled else 0) for name, by_source in counts.items()}
