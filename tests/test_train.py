"""Training and zero-shot evaluation (issue 4): fixtures in the public PARA/LAPIS layouts go through the
same code path as real data; folds are user-disjoint; resume continues the loss curve; bad roots are
one sentence; controls behave as controls."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.dataset_fixtures import write_captions, write_lapis_fixture, write_para_fixture


def _read_ids(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def test_para_fixture_trains_and_evaluates_on_exactly_the_fold_test_users(env, tmp_path):
    fx = write_para_fixture(tmp_path / "para")
    out = tmp_path / "run"
    code, stdout, err = env.run_cli("train", "--dataset", "para", "--root", str(fx.root), "--fold", "1",
                                    "--steps", "3", "--batch-size", "4", "--out", str(out),
                                    "--tasks", "overall,attributes", "--checkpoint-every", "2")
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    train_ids, test_ids = fx.folds[1]
    data_users = {r["userId"] for r in fx.rows}
    assert summary["n_users"] == len(set(train_ids) & data_users)
    meta = json.loads((out / "adapter" / "pmllm_config.json").read_text())
    assert meta["trained_on"]["dataset"] == "para" and meta["demo"] is True
    code, stdout, err = env.run_cli("eval", "--checkpoint", str(out), "--dataset", "para", "--root", str(fx.root),
                                    "--fold", "1", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    for key in ("srocc", "plcc", "per_user_srocc_mean", "n_users", "n_pairs", "control"):
        assert key in result
    assert result["control"] == "none"
    # fold 1 tests B22 and C32 (Z99 is listed but has no ratings), 5 ratings each
    assert sorted(set(test_ids) & data_users) == ["B22", "C32"]
    assert result["n_users"] == 2
    assert result["n_pairs"] == sum(1 for r in fx.rows if r["userId"] in set(test_ids)) == 10
    report = Path(result["report"])
    assert (report / "metrics.json").is_file() and (report / "report.md").is_file() and (report / "eval.png").is_file()


def test_train_split_never_contains_fold_test_users(tmp_path):
    from pmllm_batch.train.datasets import load_para

    fx = write_para_fixture(tmp_path / "para")
    for fold in fx.folds:
        train = load_para(fx.root, fold=fold, split="train")
        test = load_para(fx.root, fold=fold, split="test")
        assert set(train.user_ids).isdisjoint(test.user_ids)
        assert set(test.user_ids) <= _read_ids(fx.root / "userset" / f"TestUserIDs_Fold{fold}.txt")


def test_lapis_fixture_trains_and_evaluates_with_a_seeded_split(env, tmp_path):
    from pmllm_batch.train.datasets import load_lapis

    fx = write_lapis_fixture(tmp_path / "lapis")
    out = tmp_path / "run"
    code, _, err = env.run_cli("train", "--dataset", "lapis", "--root", str(fx.root), "--steps", "2",
                               "--batch-size", "4", "--out", str(out))
    assert code == 0, err
    code, stdout, err = env.run_cli("eval", "--checkpoint", str(out / "adapter"), "--dataset", "lapis",
                                    "--root", str(fx.root), "--json", "--control", "shuffled")
    assert code == 0, err
    result = json.loads(stdout)
    test = load_lapis(fx.root, fold=1, split="test", seed=0)  # what eval's defaults (--fold 1 --seed 0) pick
    assert test.user_ids == ["101", "104"] and len(test) == 10
    assert result["control"] == "shuffled"
    assert (result["n_users"], result["n_pairs"]) == (2, 10)


def test_resumed_training_continues_the_same_loss_curve(tmp_path, demo_model):
    from pmllm_batch.train.datasets import load_para
    from pmllm_batch.train.loop import TrainCfg, Trainer

    fx = write_para_fixture(tmp_path / "para", n_images=10, ratings_per_user=8)
    ds = load_para(fx.root, fold=1, split="train")
    cfg = TrainCfg(steps=6, batch_size=4, lr=5e-3, warmup_steps=1, checkpoint_every=3, seed=3)

    def fresh():
        return copy.deepcopy(demo_model)  # three trainers, three private copies of the same start

    straight = Trainer(fresh(), ds, tmp_path / "a", cfg).train()
    Trainer(fresh(), ds, tmp_path / "b", cfg).train(until=3)  # "killed" after step 3
    resumed = Trainer(fresh(), ds, tmp_path / "b", cfg)
    assert resumed.resume() and resumed.step == 3
    history = resumed.train()
    a = [h["loss"] for h in straight]
    b = [h["loss"] for h in history]
    assert len(b) == 6
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert a[0] != a[-1]  # it actually trained


def test_captions_add_the_description_task(tmp_path, fresh_demo_model):
    from pmllm_batch.train.datasets import load_para
    from pmllm_batch.train.loop import TrainCfg, Trainer

    fx = write_para_fixture(tmp_path / "para")
    caps = write_captions(tmp_path / "caps.csv", {img: "a calm photo" for img in fx.images})
    ds = load_para(fx.root, fold=1, split="train", captions=caps)
    assert [s.caption for s in ds.samples] == ["a calm photo"] * len(ds.samples) and len(ds.samples) == 20
    t = Trainer(fresh_demo_model, ds, tmp_path / "c", TrainCfg(steps=1, batch_size=4, checkpoint_every=0))
    assert t.captions == list(range(len(ds.samples)))  # every sample can feed the caption loss
    loss = t._caption_loss(np.random.default_rng(0))
    assert loss.requires_grad and float(loss.detach()) > 0  # a cross-entropy: its value is not known ahead
    # `train --caption-weight 0`: ratings only, the description task is never run
    calls = []
    off = Trainer(fresh_demo_model, ds, tmp_path / "d", TrainCfg(steps=2, batch_size=4, checkpoint_every=0,
                                                                 caption_weight=0.0))
    off._caption_loss = lambda rng: calls.append(1)  # type: ignore[method-assign]
    off.train()
    assert off.step == 2 and calls == []


@pytest.mark.parametrize("breakage, expected", [
    ("no_root", "PARA dataset root {root} does not exist or is not a folder."),
    ("no_csv", "PARA file {root}/annotation/PARA-Images.csv is missing."),
    ("no_column", "PARA file {root}/annotation/PARA-Images.csv has no column 'aestheticScore'."),
])
def test_bad_dataset_roots_are_one_sentence(env, tmp_path, breakage, expected):
    root = tmp_path / "para"
    if breakage != "no_root":
        write_para_fixture(root)
        csv = root / "annotation" / "PARA-Images.csv"
        if breakage == "no_csv":
            csv.unlink()
        else:
            csv.write_text(csv.read_text().replace("aestheticScore", "score"))
    code, _, err = env.run_cli("train", "--dataset", "para", "--root", str(root), "--steps", "1",
                               "--out", str(tmp_path / "o"))
    assert (code, err) == (2, f"pmllm-batch: error: {expected.format(root=root)}\n")


def test_missing_images_are_skipped_with_a_count(env, tmp_path):
    fx = write_para_fixture(tmp_path / "para", missing_images=[0, 1])
    code, stdout, err = env.run_cli("train", "--dataset", "para", "--root", str(fx.root), "--steps", "1",
                                    "--batch-size", "2", "--out", str(tmp_path / "o"))
    assert code == 0, err
    train_users = set(fx.folds[1][0])
    skipped = [r for r in fx.rows if f"{r['sessionId']}/{r['imageName']}" in fx.missing and r["userId"] in train_users]
    assert len(skipped) == 3  # the ratings of iaa_pub1 and iaa_pub2 by fold 1's training users
    assert json.loads(stdout.strip().splitlines()[-1])["skipped_missing_images"] == len(skipped)


def test_controls_change_what_the_model_sees(tmp_path, fresh_demo_model):
    from pmllm_batch.train.datasets import load_para
    from pmllm_batch.train.evaluate import personas_for, predict

    model = fresh_demo_model  # its fusion weights are perturbed below
    fx = write_para_fixture(tmp_path / "para", n_images=10, ratings_per_user=8)
    ds = load_para(fx.root, fold=None, split="all")
    real = personas_for(ds, "none")
    shuffled = personas_for(ds, "shuffled", seed=1)
    assert sorted(shuffled.values()) == sorted(real.values())
    assert all(shuffled[u] != real[u] for u in real)  # nobody keeps their own profile
    assert len(set(personas_for(ds, "neutral").values())) == 1
    assert set(personas_for(ds, "no-profile").values()) == {""}
    torch.manual_seed(0)
    for block in model.fused.fusion_blocks.values():
        torch.nn.init.normal_(block.to_out.weight, std=0.3)
    pred, _, users = predict(model, ds, "no-vision")
    for u in set(users):  # without vision a user's photos are indistinguishable
        assert np.ptp(pred[users == u]) < 1e-6
    with_vision, _, _ = predict(model, ds, "none")
    assert np.ptp(with_vision[users == users[0]]) > 1e-5
    open_gate, _, _ = predict(model, ds, "open-gate")
    assert np.abs(open_gate - with_vision).max() > 1e-5
    assert model.cfg.fusion.gate == "selective"
    for block in model.fused.fusion_blocks.values():
        assert block.gate_mode == "selective"  # the control is undone afterwards
