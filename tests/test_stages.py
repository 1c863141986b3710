"""The pipeline's stages run one by one, outside :class:`LibraryScorer`, give the scores ``rank`` gives (issue 21).

This is what another engine (a Ray cluster) does: plan from the database, read, encode, project, score and write
with the same stage functions, holding its own model and no LibraryScorer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from pmllm_batch.config import load_config
from pmllm_batch.contracts import FailReason, FeatureEncoder, PhotoStatus
from pmllm_batch.db.store import Store
from pmllm_batch.scan.plan import plan_scan
from pmllm_batch.scorer import stages
from pmllm_batch.scorer.models import load_models
from tests.imagegen import make_bad_files, make_photo_folder

PROFILES = {
    "ana": dict(age="22-25", gender="female", photography_experience="expert", big_five={"openness": 9}),
    "bernd": dict(age=64, big_five={"openness": 2, "extraversion": 2}),
}


def _scores(store: Store) -> dict[tuple[str, str], tuple[float, list[float]]]:
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT s.content_hash, p.name, s.score, s.probs_json FROM scores s "
                                 "JOIN profiles p ON p.id = s.profile_id"))
        return {(h, name): (score, json.loads(probs)) for h, name, score, probs in rows}


@pytest.mark.integration
def test_the_stages_one_by_one_give_the_scores_rank_gives(env, tmp_path: Path) -> None:
    lib = tmp_path / "library"
    good = make_photo_folder(lib)
    bad = make_bad_files(lib / "bad")
    for name, fields in PROFILES.items():
        code, _, err = env.run_cli("profile", "add", str(env.write_profile(name, **fields)))
        assert code == 0, err
    code, _, err = env.run_cli("rank", str(lib), "-q")
    assert code == 0, err
    with env.store() as store:
        by_rank = _scores(store)
    assert len(by_rank) == 2 * len(good)

    # the same library in a second database, through the stage functions alone
    settings = load_config(overrides={"db": {"url": f"sqlite:///{tmp_path / 'stages.sqlite'}"}})
    loaded = load_models(settings)
    assert isinstance(loaded.vision, FeatureEncoder)
    with Store(settings.db_url()) as store:
        for path in sorted((env.root / "profiles").glob("*.toml")):
            code, _, err = env.run_cli("--db", settings.db_url(), "profile", "add", str(path))
            assert code == 0, err
        model_id = store.ensure_model(loaded.fingerprint, loaded.preset, {"demo": True})
        plan = plan_scan([lib], store.photo_index([str(lib)]), settings.scan)  # plan
        assert len(plan.todo) == len(good) + len(bad)
        chunk = list(plan.todo)
        hashes = [stages.safe_hash(e.path) for e in chunk]
        batch = stages.read_batch(chunk, settings.scan, hashes=hashes, twins={}, cached=set(),  # read
                                  preprocess=loaded.vision.preprocess)
        need = batch.need_encoding(cached=set())
        features = stages.encode_batch(loaded.vision, need)  # encode
        stages.write_features(store, features, loaded.vision.graph_id, budget_bytes=0)
        stages.write_photos(store, batch)
        order = sorted(features)
        tokens = stages.project(loaded.model, [features[h] for h in order])  # score
        for prof in store.list_profiles():
            prefix = loaded.model.encode_prefix(prof.profile)
            rows = stages.score_tokens(loaded.model, prefix, prof.id, order, tokens, batch_size=3)
            assert stages.write_scores(store, model_id, rows) == len(order)  # write
            assert stages.write_scores(store, model_id, rows) == 0  # a retried batch duplicates nothing
        by_stages = _scores(store)
        failed = {r.path: r.error_reason for r in store.photo_index([str(lib)]).values()
                  if r.status == PhotoStatus.FAILED}

    assert set(by_stages) == set(by_rank)
    for key, (score, probs) in by_rank.items():
        assert by_stages[key][0] == pytest.approx(score, abs=1e-6)
        assert by_stages[key][1] == pytest.approx(probs, abs=1e-5)
    assert failed == {str(path): reason for reason, path in bad.items()}
    assert {FailReason(r) for r in failed.values()} <= set(FailReason)
    assert len({h for h, _ in by_rank}) == len(good)
