"""Scoring profiles: persona prefixes (once per profile and model), the one pass over freshly encoded photos, and
the pairs left over, scored from the feature cache. Used by the local engine (:mod:`pmllm_batch.scorer.batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pmllm_batch.config import Settings
from pmllm_batch.db.records import ProfileRow
from pmllm_batch.db.store import Store
from pmllm_batch.scorer import stages
from pmllm_batch.scorer.known import KnownModel, ModelRegistry
from pmllm_batch.scorer.linking import Grouper
from pmllm_batch.scorer.models import LoadedModels, ModelCache
from pmllm_batch.scorer.summary import RunSummary

if TYPE_CHECKING:
    import torch
    from tqdm import tqdm

    from pmllm_batch.model.pmllm import PrefixState

__all__ = ["ProfileScoring"]


class ProfileScoring:
    """Scores (photo, profile) pairs with the registry's model; keeps each profile's persona prefix across runs
    (the daemon's batches reuse them)."""

    def __init__(self, settings: Settings, store: Store, models: ModelCache, registry: ModelRegistry,
                 grouper: Grouper, *, should_stop: Callable[[], bool],
                 bar: Callable[[int, str], tqdm[None] | None]) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.registry = registry
        self.grouper = grouper
        self.should_stop = should_stop
        self._bar = bar
        self._budget = settings.vision.cache_budget_bytes
        self._prefixes: dict[tuple[str, int, str], PrefixState] = {}  # (model fp, profile id, persona) -> prefix

    def _todo(self, profiles: Sequence[ProfileRow], model: KnownModel, library: set[str]) -> dict[int, list[str]]:
        return {p.id: sorted(library - self.store.scored_hashes(p.id, model.id)) for p in profiles}

    def score_missing(self, profiles: Sequence[ProfileRow], summary: RunSummary) -> None:
        """Score every ok photo that lacks a score for each profile under the current model (from the cache)."""
        library = set(self.store.ok_hashes())
        if not library:
            return  # an empty library needs no model
        model = self.registry.known()
        if model is not None:
            todo = self._todo(profiles, model, library)
            if not any(todo.values()):
                self.registry.note(model, summary)
                return
        loaded = self.models.get()
        registered = self.registry.loaded()
        if model is None or registered.id != model.id:
            todo = self._todo(profiles, registered, library)
        self.registry.note(registered, summary)
        for prof in profiles:
            if todo[prof.id] and not self._score_profile(prof, todo[prof.id], loaded, registered, summary):
                return

    def _score_profile(self, prof: ProfileRow, pending: list[str], loaded: LoadedModels, model: KnownModel,
                       summary: RunSummary) -> bool:
        """Score ``pending`` photos for one profile from cached features (encoding those whose entry was evicted).
        Returns False when a stop was requested."""
        prefix = self._prefix(loaded, model, prof)
        bar = self._bar(len(pending), f"score {prof.name}")
        batch_size = int(self.settings.score.batch_size)
        try:
            for i in range(0, len(pending), batch_size):
                if self.should_stop():
                    return False
                chunk = pending[i : i + batch_size]
                features = self._features(chunk, loaded, model, summary)
                ok = [h for h in chunk if h in features]
                if ok:
                    tokens = stages.project(loaded.model, [features[h] for h in ok])
                    rows = stages.score_tokens(loaded.model, prefix, prof.id, ok, tokens, batch_size)
                    summary.scored += stages.write_scores(self.store, model.id, rows)
                if bar:
                    bar.update(len(chunk))
        finally:
            if bar:
                bar.close()
        return True

    def _features(self, hashes: list[str], loaded: LoadedModels, model: KnownModel,
                  summary: RunSummary) -> dict[str, np.ndarray]:
        features, new = stages.features_for(self.store, hashes, loaded.vision, self.settings.scan)
        if new:
            stages.write_features(self.store, new, loaded.vision.graph_id, self._budget)
            self.grouper.add_tokens(new, loaded.vision.graph_id)
            summary.encoded += len(new)
        return features

    def _prefix(self, loaded: LoadedModels, model: KnownModel, prof: ProfileRow) -> PrefixState:
        """The profile's cached persona prefix under this model (kept across runs: the daemon's batches reuse it)."""
        key = (model.fingerprint, int(prof.id), stages.persona_key(prof.profile))
        if key not in self._prefixes:
            for old in [k for k in self._prefixes if k[1] == key[1]]:
                del self._prefixes[old]  # that profile changed, or the model did
            self._prefixes[key] = loaded.model.encode_prefix(prof.profile)
        return self._prefixes[key]

    def score_fresh(self, features: dict[str, np.ndarray], loaded: LoadedModels, profiles: Sequence[ProfileRow],
                    summary: RunSummary) -> None:
        """One pass: score photos encoded just now for every profile of this run, from the features in memory."""
        if not profiles or not features:
            return
        model = self.registry.loaded()
        self.registry.note(model, summary)
        order = list(features)
        row = {h: i for i, h in enumerate(order)}
        tokens: torch.Tensor = stages.project(loaded.model, [features[h] for h in order])  # once per photo
        for prof in profiles:
            done = self.store.scored_among(prof.id, model.id, order)  # a photo encoded again (its cache evicted)
            todo = [h for h in order if h not in done]
            if not todo:
                continue
            prefix = self._prefix(loaded, model, prof)
            size = int(self.settings.score.batch_size)
            for i in range(0, len(todo), size):  # one transaction per chunk: Ctrl-C keeps what was scored
                chunk = todo[i : i + size]
                rows = stages.score_tokens(loaded.model, prefix, prof.id, chunk, tokens[[row[h] for h in chunk]], size)
                summary.scored += stages.write_scores(self.store, model.id, rows)
