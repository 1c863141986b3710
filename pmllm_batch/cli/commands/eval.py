"""``pmllm-batch eval``: zero-shot evaluation on a fold's test users, with controls."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pmllm_batch.config import Settings

from . import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    from pmllm_batch.train import CONTROLS

    p = subparsers.add_parser(
        "eval",
        help="zero-shot evaluation (SROCC/PLCC pooled and per user) on a fold's test users",
        description="Score every (test user, image) pair of fold K with the adapter and report SROCC and PLCC, "
        "pooled and per user (mean ± std, bootstrap 95%% CI). Writes metrics.json, report.md and eval.png.",
    )
    p.add_argument("--checkpoint", required=True, help="adapter folder, or a `train --out` folder")
    p.add_argument("--dataset", choices=("para", "lapis", "synthetic"), required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--fold", type=positive_int, default=1)
    p.add_argument("--split", choices=("test", "train", "all"), default="test")
    p.add_argument("--control", choices=CONTROLS, default="none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="report folder (default: CHECKPOINT/eval-<dataset>-fold<K>-<control>)")
    p.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pmllm_batch.model.factory import create_model
    from pmllm_batch.train.datasets import load_dataset
    from pmllm_batch.train.evaluate import evaluate

    ckpt = Path(args.checkpoint)
    if (ckpt / "adapter").is_dir():
        ckpt = ckpt / "adapter"
    ds = load_dataset(args.dataset, Path(args.root), fold=args.fold, split=args.split, seed=args.seed)
    model = create_model(None, str(ckpt), offline=settings.model.offline, device=settings.resolved_device())
    out = Path(args.out) if args.out else Path(args.checkpoint) / f"eval-{args.dataset}-fold{args.fold}-{args.control}"
    result = evaluate(model, ds, args.control, seed=args.seed, out_dir=out)
    result["skipped_missing_images"] = ds.skipped_missing_images
    result["report"] = str(out)
    if args.json:
        print(json.dumps(result, default=float))
    else:
        sys.stdout.write(
            f"{args.dataset} fold {args.fold} ({args.split}, control {args.control}): "
            f"SROCC {result['srocc']:.4f}  PLCC {result['plcc']:.4f}  per-user SROCC "
            f"{result['per_user_srocc_mean']:.4f} ± {result['per_user_srocc_std']:.4f}  "
            f"({result['n_users']} users, {result['n_pairs']} pairs)\nreport: {out}\n"
        )
        if ds.skipped_missing_images:
            sys.stdout.write(f"skipped {ds.skipped_missing_images} ratings whose image file is missing\n")
    return 0
