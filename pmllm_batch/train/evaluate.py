"""Zero-shot evaluation with the controls that tell profile use from profile-blindness.

Controls (``--control``):

* ``none`` — the real profiles;
* ``neutral`` — every user gets the neutral profile (no personal details);
* ``shuffled`` — each user gets another test user's profile (a seeded derangement);
* ``no-vision`` — fusion off: the LLM never sees the image;
* ``no-profile`` — the persona text is empty;
* ``open-gate`` — non-selective fusion: the gate is fixed open (the trained weights otherwise unchanged).

A claim that the profile matters is only made when real profiles beat ``neutral`` and ``shuffled``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pmllm_batch.errors import UserError
from pmllm_batch.model.pmllm import PMLLM
from pmllm_batch.model.presets import demo_note
from pmllm_batch.model.prompts import render_persona
from pmllm_batch.profiles import NEUTRAL_PROFILE, Profile
from pmllm_batch.train import CONTROLS
from pmllm_batch.train.datasets import RatingDataset
from pmllm_batch.train.features import image_features
from pmllm_batch.train.metrics import evaluate_predictions


def personas_for(
    dataset: RatingDataset,
    control: str,
    seed: int = 0,
    *,
    style: str = "standard",
    fields: Sequence[str] | None = None,
) -> dict[str, str]:
    """Each test user's persona text under a control; ``style``/``fields`` change how real profiles are written."""
    users = sorted(dataset.profiles)

    def render(profile: Profile) -> str:
        return render_persona(profile, style=style, fields=fields)

    if control == "neutral":
        return dict.fromkeys(users, render_persona(NEUTRAL_PROFILE))
    if control == "no-profile":
        return dict.fromkeys(users, "")
    if control == "shuffled" and len(users) > 1:
        perm = np.random.default_rng(seed).permutation(len(users))
        # user perm[i] gets the profile of user perm[i+1]: a derangement, nobody keeps their own
        return {users[perm[i]]: render(dataset.profiles[users[perm[(i + 1) % len(users)]]]) for i in range(len(users))}
    return {u: render(dataset.profiles[u]) for u in users}


@torch.no_grad()
def predict(
    model: PMLLM,
    dataset: RatingDataset,
    control: str = "none",
    seed: int = 0,
    batch: int = 64,
    features: tuple[dict[Path, int], torch.Tensor] | None = None,
    *,
    style: str = "standard",
    fields: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted and true ratings for every (user, image) pair, through the prefix-cached path."""
    if control not in CONTROLS:
        raise UserError(f"unknown control '{control}'; choose one of {', '.join(CONTROLS)}.")
    model.eval()
    index, feats = features or image_features(model, dataset)
    personas = personas_for(dataset, control, seed, style=style, fields=fields)
    by_user: dict[str, list[int]] = {}
    for i, s in enumerate(dataset.samples):
        by_user.setdefault(s.user_id, []).append(i)
    pred = np.zeros(len(dataset.samples), dtype=np.float64)
    gate = model.cfg.fusion.gate
    if control == "open-gate":
        model.fused.set_gate_mode("open")
    try:
        for uid, rows in by_user.items():
            prefix = model.encode_prefix(personas[uid])
            for j in range(0, len(rows), batch):
                chunk = rows[j : j + batch]
                if control == "no-vision":
                    out = model.score_cached(prefix, None, batch=len(chunk))
                else:
                    f = feats[[index[dataset.samples[i].image_path] for i in chunk]]
                    out = model.score_cached(prefix, model.projector(f.to(model.device, torch.float32)))
                pred[chunk] = out.scores.cpu().numpy()
    finally:
        model.fused.set_gate_mode(gate)
    target = np.array([s.score for s in dataset.samples])
    users = np.array([s.user_id for s in dataset.samples])
    return pred, target, users


def evaluate(
    model: PMLLM,
    dataset: RatingDataset,
    control: str = "none",
    *,
    seed: int = 0,
    n_boot: int = 1000,
    out_dir: str | Path | None = None,
    features: tuple[dict[Path, int], torch.Tensor] | None = None,
    style: str = "standard",
    fields: Sequence[str] | None = None,
) -> dict[str, Any]:
    pred, target, users = predict(model, dataset, control, seed, features=features, style=style, fields=fields)
    result = evaluate_predictions(pred, target, users.tolist(), n_boot=n_boot, seed=seed)
    result = {
        **result,
        "control": control,
        "persona_style": style,
        "profile_fields": list(fields) if fields is not None else None,
        "dataset": dataset.name,
        "demo": bool(model.cfg.demo),
        "demo_note": demo_note(model.cfg),
    }
    if out_dir is not None:
        write_report(result, pred, target, users, Path(out_dir))
    return result


def write_report(result: dict[str, Any], pred: np.ndarray, target: np.ndarray, users: np.ndarray, out: Path) -> None:
    """metrics.json, report.md and eval.png (predicted vs true scatter + per-user SROCC histogram)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pmllm_batch.train.metrics import per_user_metrics

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    per_user = per_user_metrics(pred, target, users.tolist())["per_user"]
    lo, hi = result.get("per_user_srocc_ci95", [float("nan"), float("nan")])
    md = [
        f"# Zero-shot evaluation — {result['dataset']} (control: {result['control']})",
        "",
        str(result.get("demo_note") or "demo model: these figures show the mechanism, not anyone's real taste.")
        if result.get("demo")
        else "",
        "",
        "| metric | value |",
        "|---|---|",
        f"| pooled SROCC | {result['srocc']:.4f} |",
        f"| pooled PLCC | {result['plcc']:.4f} |",
        f"| per-user SROCC | {result['per_user_srocc_mean']:.4f} ± {result['per_user_srocc_std']:.4f} "
        f"(95% CI {lo:.4f}–{hi:.4f}) |",
        f"| per-user PLCC | {result['per_user_plcc_mean']:.4f} ± {result['per_user_plcc_std']:.4f} |",
        f"| users / pairs | {result['n_users']} / {result['n_pairs']} |",
        "",
    ]
    (out / "report.md").write_text("\n".join(md))
    fig, ax = plt.subplots(1, 2, figsize=(9, 4))
    ax[0].scatter(target, pred, s=4, alpha=0.4)
    ax[0].set_xlabel("true rating")
    ax[0].set_ylabel("predicted rating")
    ax[0].set_title(f"pooled SROCC {result['srocc']:.3f}")
    ax[1].hist([v["srocc"] for v in per_user.values() if np.isfinite(v["srocc"])], bins=20)
    ax[1].set_xlabel("per-user SROCC")
    ax[1].set_title(f"{result['n_users']} users, control: {result['control']}")
    fig.tight_layout()
    fig.savefig(out / "eval.png", dpi=90)
    plt.close(fig)
