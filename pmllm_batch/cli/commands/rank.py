"""``pmllm-batch rank PATH...``: scan folders, score new work for each profile, print the top N."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pmllm_batch.config import Settings

from . import plural, positive_int, summary_line
from .model_options import add_switch_option, checkpoint_path, scoring_settings
from .view_options import add_learn_option, add_view_options, learn_of, view_of

if TYPE_CHECKING:
    from pmllm_batch.db import RankedPhoto
    from pmllm_batch.outputs.bursts import RankingView, TopChange
    from pmllm_batch.outputs.personal import Learned
    from pmllm_batch.scorer.summary import RunSummary

# for a model registered before its note was stored (the demo preset was the only demo then)
DEMO_NOTE = "demo: a tiny model trained on a synthetic task — scores show the mechanism, not anyone's real taste."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rank",
        help="scan photo folders, score them for each profile, print each profile's top photos",
        description="Scan PATH folders (recursively), score every new photo for the stored profiles "
        "(only missing work is done), and print each profile's top N. Nothing is written into the folders.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="photo folder(s)")
    parser.add_argument("--profile", action="append", metavar="NAME", help="only these profiles (repeatable)")
    parser.add_argument("--top", type=positive_int, default=10, help="photos to print per profile (default 10)")
    parser.add_argument("--checkpoint", metavar="DIR",
                        help="adapter folder to score with (overrides model.checkpoint), e.g. a `train --out` DIR")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="score even with fusion that was never trained (every photo alike): benchmarks only")
    add_switch_option(parser)
    parser.add_argument("--json", action="store_true",
                        help="JSON lines: one object per profile ranking, then one summary object")
    parser.add_argument("--engine", choices=("local", "ray"),
                        help="run the pipeline in this process (local) or on a Ray cluster (ray; docs/RAY.md); "
                        "overrides engine.kind")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="Ray cluster to join (auto, HOST:6379, ray://HOST:10001); implies --engine ray; "
                        "overrides engine.address")
    add_view_options(parser, under=False)  # the ranking printed is of the photos under PATH... only
    add_learn_option(parser)
    parser.set_defaults(func=run)


@dataclass
class Shown:
    """One person's ranking as ``rank`` prints it: the top rows, what they learned from, what the stars changed."""

    rows: list[RankedPhoto]
    learned: Learned
    change: TopChange | None  # None: a profile-only ranking (nothing to compare)

    def note(self) -> str:
        """``"learned from 3 of your ratings — 4 photos entered your top 10, 4 left"`` or ``"profile only"``."""
        text = self.learned.describe()
        return f"{text} — {self.change.describe()}" if self.change is not None else text

    def to_json(self, name: str) -> dict[str, object]:
        data: dict[str, object] = {"profile": name, "top": [r.__dict__ for r in self.rows],
                                   "ranking": self.learned.ranking, "learned_from": self.learned.learned_from}
        if self.change is not None:
            data.update(entered_top=self.change.entered, left_top=self.change.left)
        return data


def read_shown(view: RankingView, names: list[str], top: int) -> dict[str, Shown]:
    """Each person's top ``top`` of ``view``, with what it learned from and (learned rankings) what changed."""
    out = {}
    for name in names:
        rows = view.ranking(name, top=top)
        learned = view.learned(name)
        change = None if learned.zero_shot else view.top_change(name, top)
        out[name] = Shown(rows, learned, change)
    return out


def _summary_line(s: Mapping[str, object]) -> str:
    return summary_line(s)


def with_model_options(args: argparse.Namespace, settings: Settings) -> Settings:
    """``--checkpoint`` / ``--allow-untrained`` as [model] overrides (a `train --out` folder means its adapter/)."""
    changes: dict[str, Any] = {}
    if getattr(args, "checkpoint", None):
        changes["checkpoint"] = checkpoint_path(args.checkpoint)
    if getattr(args, "allow_untrained", False):
        changes["allow_untrained"] = True
    return dataclasses.replace(settings, model=dataclasses.replace(settings.model, **changes)) if changes else settings


def with_engine_options(args: argparse.Namespace, settings: Settings) -> Settings:
    """``--engine`` / ``--ray-address`` as [engine] overrides (an address alone means the Ray engine)."""
    changes: dict[str, Any] = {}
    if getattr(args, "ray_address", None):
        changes["address"] = args.ray_address
        changes["kind"] = "ray"
    if getattr(args, "engine", None):
        changes["kind"] = args.engine
    if not changes:
        return settings
    return dataclasses.replace(settings, engine=dataclasses.replace(settings.engine, **changes))


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = with_engine_options(args, with_model_options(args, settings))
    if settings.engine.kind == "ray":
        from pmllm_batch.scorer.ray_engine import require_ray

        require_ray()  # one sentence naming the extra, before anything is opened
    from pmllm_batch.db import Store
    from pmllm_batch.outputs.bursts import RankingView
    from pmllm_batch.scorer.batch import LibraryScorer

    roots = [os.path.abspath(os.path.expanduser(p)) for p in args.paths]
    group, scope = view_of(args, settings, roots)  # checked before any work: a bad date is one sentence
    learn, zero_shot = learn_of(args, settings)
    with Store(settings.db_url()) as store:
        # the library's model unless the command line names another (refused without --switch-model: exit 2)
        settings = scoring_settings(args, settings, store, args.profile).settings
        progress = not args.quiet and sys.stderr.isatty()
        if settings.engine.kind == "ray":
            from pmllm_batch.scorer.ray_engine import RayScorer

            summary = RayScorer(settings, store, progress=progress).run(args.paths, args.profile)
        else:
            summary = LibraryScorer(settings, store, progress=progress).run(args.paths, args.profile)
        names = args.profile or [p.name for p in store.list_profiles()]
        rankings: dict[str, Shown] = {}
        if args.json or not args.quiet:  # -q prints nothing: no ranking is read (a cron run on a big library)
            view = RankingView(store, group=group, scope=scope, learn=learn, zero_shot=zero_shot)
            rankings = read_shown(view, names, args.top)
        demo = summary.demo  # also when nothing loaded: the model is known from an earlier run
    s = summary.to_dict()
    if args.json:
        for name, shown in rankings.items():
            print(json.dumps(shown.to_json(name)))
        print(json.dumps({**s, "demo": demo}))
        return 0
    if args.quiet:
        return 0  # -q: nothing on success (the rankings stay in the database: export, status, report)
    _print_text(rankings, summary, settings, demo)
    return 0


def _print_text(rankings: Mapping[str, Shown], summary: RunSummary, settings: Settings, demo: bool) -> None:
    """``rank``'s text: the demo note, each person's top (with what it learned from), the summary, what was not
    ranked and why, every failed file."""
    s = summary.to_dict()
    out = sys.stdout
    if demo:
        out.write(f"note: {summary.note or DEMO_NOTE}\n")
    for name, shown in rankings.items():
        out.write(f"\n{name} — top {len(shown.rows)}\n{name}: {shown.note()}\n")
        for r in shown.rows:
            extra = [os.path.basename(p) for p in r.paths[1:]]
            note = f"  (+ {', '.join(extra)})" if extra else ""
            if r.group_size > 1:
                note += f"  [best of {r.group_size} similar]"
            out.write(f"{r.rank:4d}. {r.score:.3f}  {r.path}{note}\n")
    out.write("\n" + _summary_line(s) + "\n")
    unranked = []
    if summary.too_small:
        unranked.append(f"{plural(summary.too_small, 'photo')} too small to judge (shorter side below [scan] "
                        f"min_side = {settings.scan.min_side} px)")
    if summary.blank:
        unranked.append(f"{plural(summary.blank, 'blank frame')} (near-uniform pixels: below [scan] blank_std = "
                        f"{settings.scan.blank_std:g})")
    if summary.raw_pairs:
        unranked.append(f"{plural(summary.raw_pairs, 'RAW file')} shown as the JPEG shot with it")
    if unranked:
        out.write("  not ranked: " + "; ".join(unranked) + "\n")
    for f in summary.failures:
        out.write(f"  failed: {f['path']}: {f['reason']} — {f['message']}\n")
