"""``pmllm-batch eval``: zero-shot evaluation on a fold's test users, with controls; ``--shots``: few-shot protocol."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pmllm_batch.config import Settings

from . import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    from pmllm_batch.model.prompts import PERSONA_STYLES, PROFILE_FIELDS
    from pmllm_batch.train import CONTROLS

    p = subparsers.add_parser(
        "eval",
        help="zero-shot evaluation (SROCC/PLCC pooled and per user) on a fold's test users",
        description="Score every (test user, image) pair of fold K with the adapter and report SROCC and PLCC, "
        "pooled and per user (mean ± std, bootstrap 95% CI). Writes metrics.json, report.md and eval.png. With "
        "--shots: the few-shot protocol (pmllm_batch/train/fewshot.py), written to fewshot.json and report.md.",
    )
    p.add_argument("--checkpoint", required=True, help="adapter folder, or a `train --out` folder")
    p.add_argument("--dataset", choices=("para", "lapis", "synthetic"), required=True, help="dataset layout")
    p.add_argument("--root", required=True, help="dataset root folder (public layout)")
    p.add_argument("--fold", type=positive_int, default=1, help="user fold whose test users are scored (default 1)")
    p.add_argument("--split", choices=("test", "train", "all"), default="test",
                   help="which users of the fold (default: test, never seen in training)")
    p.add_argument("--control", choices=CONTROLS, default="none", help="a control arm (default: none, the real model)")
    p.add_argument(
        "--persona-style",
        choices=PERSONA_STYLES,
        default="standard",
        help="how profiles are written: standard (training wording), paraphrase (same facts, other words), "
        "notes (same facts as a free-text self-description)",
    )
    p.add_argument(
        "--profile-fields",
        type=_fields,
        help=f"render only these profile fields (comma list of {', '.join(PROFILE_FIELDS)}): coarse profiles",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the shuffled control")
    p.add_argument(
        "--shots",
        type=_shots,
        help="few-shot protocol instead of zero-shot: for each k in this comma list (e.g. 0,5,10,20,50,100), k of "
        "a test person's ratings teach the per-person learner and --query others are ranked; reports the learner, "
        "the zero-shot model and a stars-only learner per k (per-user SROCC, bootstrap 95%% CI over people)",
    )
    p.add_argument("--query", type=positive_int, default=50,
                   help="with --shots: held-out photos ranked per person and draw (default 50)")
    p.add_argument("--draws", type=positive_int, default=3,
                   help="with --shots: support/query draws per person (default 3)")
    p.add_argument("--calibration-people", type=int, default=40, metavar="N",
                   help="with --shots: the learners' prior strength is fixed from N of the fold's training people "
                   "(default 40; 0: each person's own evidence chooses it)")
    p.add_argument("--compare", action="store_true",
                   help="with --shots: also report the other learner designs (per-person evidence, kernel)")
    p.add_argument("--out", help="report folder (default: CHECKPOINT/eval-<dataset>-fold<K>-<control>)")
    p.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    p.set_defaults(func=run)


def _shots(text: str) -> tuple[int, ...]:
    from pmllm_batch.train.fewshot import parse_shots

    try:
        return parse_shots(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fields(text: str) -> list[str]:
    from pmllm_batch.model.prompts import PROFILE_FIELDS

    fields = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in fields if f not in PROFILE_FIELDS]
    if bad or not fields:
        raise argparse.ArgumentTypeError(
            f"unknown profile field(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(PROFILE_FIELDS)}"
        )
    return fields


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pmllm_batch.model.spec import ModelSpec
    from pmllm_batch.train.datasets import load_dataset
    from pmllm_batch.train.evaluate import evaluate

    if args.shots is not None:
        from pmllm_batch.errors import UserError

        if args.control != "none" or args.persona_style != "standard" or args.profile_fields:
            raise UserError("--shots runs the real model only: leave out --control, --persona-style and "
                            "--profile-fields.")
        if args.query < 2:
            raise UserError("--query needs at least 2 photos to rank.")
    ckpt = Path(args.checkpoint)
    if (ckpt / "adapter").is_dir():
        ckpt = ckpt / "adapter"
    ds = load_dataset(args.dataset, Path(args.root), fold=args.fold, split=args.split, seed=args.seed)
    # the adapter's own architecture (preset None), with [model] lm_path / vision_checkpoint / offline and
    # [score] quantize as rank would load it
    model = ModelSpec.from_settings(settings, checkpoint=str(ckpt), preset=None).create()
    if args.shots is not None:
        cal = None
        if args.calibration_people > 0 and args.split == "test":
            from pmllm_batch.train.fewshot import calibration_people

            train = load_dataset(args.dataset, Path(args.root), fold=args.fold, split="train", seed=args.seed)
            cal = calibration_people(train, args.calibration_people, seed=args.seed)
        return _run_fewshot(args, ds, model, cal)
    out = Path(args.out) if args.out else Path(args.checkpoint) / f"eval-{args.dataset}-fold{args.fold}-{args.control}"
    result = evaluate(
        model, ds, args.control, seed=args.seed, out_dir=out, style=args.persona_style, fields=args.profile_fields
    )
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


def _run_fewshot(args: argparse.Namespace, ds: Any, model: Any, cal: Any) -> int:
    from pmllm_batch.model.presets import demo_note
    from pmllm_batch.train.fewshot import collect_fewshot_data, headline, run_fewshot, write_fewshot_report

    data = collect_fewshot_data(model, ds, calibration=cal)
    result = run_fewshot(data, args.shots, n_query=args.query, draws=args.draws, seed=args.seed, compare=args.compare)
    out = Path(args.out) if args.out else Path(args.checkpoint) / f"fewshot-{args.dataset}-fold{args.fold}"
    result.update(
        split=args.split,
        fold=args.fold,
        demo=bool(model.cfg.demo),
        demo_note=demo_note(model.cfg),
        skipped_missing_images=ds.skipped_missing_images,
        report=str(out),
    )
    write_fewshot_report(result, out)
    if args.json:
        print(json.dumps(result, default=float))
    else:
        sys.stdout.write(
            f"{args.dataset} fold {args.fold} ({args.split}): few-shot per-user SROCC on {args.query} held-out photos, "
            f"{args.draws} draws, mean [95% CI] over people\n"
        )
        for line in headline(result):
            sys.stdout.write(line + "\n")
        lams = ", ".join(f"{name} {cfg['lam']:g}" for name, cfg in result["learners"].items() if cfg["rule"] == "fixed")
        sys.stdout.write(f"prior strength λ: {lams or 'per person (evidence)'} "
                         f"({result['calibration']['people']} calibration people)\n")
        sys.stdout.write(f"report: {out}\n")
    return 0
