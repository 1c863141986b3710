"""``pmllm-batch profile add|list|show|remove``: manage the stored person profiles."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from pmllm_batch.config import Settings
from pmllm_batch.db import quick
from pmllm_batch.db.records import ProfileRow
from pmllm_batch.errors import ProfileError
from pmllm_batch.model.prompts import render_persona
from pmllm_batch.profiles import Profile, load_profile

from . import print_json

if TYPE_CHECKING:
    from pmllm_batch.db import Store  # imported in run: `profile list` must start in at most 0.5 s (issue 24)

ADDED, UPDATED, UNCHANGED = "added", "updated", "unchanged"


class ProfileSummary(TypedDict):
    """``profile list --json``: one stored profile."""

    name: str
    fields: dict[str, object]
    scored: int  # photos scored for it by the current model
    updated_at: str  # ISO 8601, UTC


class ProfileDetail(TypedDict):
    """``profile show --json``."""

    name: str
    fields: dict[str, object]
    persona: str
    persona_hash: str
    updated_at: str  # ISO 8601, UTC
    ratings: RatingsSummary


class RatingsSummary(TypedDict):
    """``profile show --json``'s ``ratings``: the person's own stars (``pmllm-batch rate``)."""

    total: int
    by_source: dict[str, int]  # "xmp-sidecar", "cli", ... -> ratings
    in_library: int  # of total: of photos the library holds now (the others wait for `rank`)


# ---------------------------------------------------------------------------------------------------------------------
# Work
# ---------------------------------------------------------------------------------------------------------------------


def read_profiles(paths: list[str]) -> list[Profile]:
    """Validate every file before anything is stored, so one bad file stores nothing.

    Every problem of every file is reported at once (one sentence per file, joined).

    Raises:
        ProfileError: A file is unreadable or invalid, or two files use the same name.
    """
    profiles: list[Profile] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    for path in paths:
        try:
            profile = load_profile(path)
        except ProfileError as exc:
            errors.append(str(exc).rstrip("."))
            continue
        if profile.name in seen:
            errors.append(f"{path} and {seen[profile.name]} both define the profile '{profile.name}'")
            continue
        seen[profile.name] = path
        profiles.append(profile)
    if errors:
        if len(paths) == 1 or len(errors) == 1:
            raise ProfileError(f"{errors[0]}.")
        raise ProfileError(f"{len(errors)} of {len(paths)} profile files have problems, so none was added: "
                           + "; ".join(errors) + ".")
    return profiles


def check_replacements(store: Store, profiles: list[Profile], paths: list[str], *, replace: bool) -> None:
    """Refuse to silently replace a stored person with another file's profile of the same name.

    Re-adding the file a profile came from (after editing it) updates it, as does a file with identical fields;
    a *different* file with the same name and other fields needs ``--replace``, because its scores are cleared.

    Raises:
        ProfileError: One sentence naming every such clash.
    """
    if replace:
        return
    stored = {row.name: row for row in store.list_profiles()}
    sources = store.profile_sources()
    clashes = []
    for profile, path in zip(profiles, paths, strict=True):
        row = stored.get(profile.name)
        if row is None or row.profile.to_dict() == profile.to_dict():
            continue
        source = sources.get(profile.name)
        if source is not None and source == str(Path(path).resolve()):
            continue  # the same file, edited: an update
        origin = f"added from {source}" if source else "added earlier"
        clashes.append(f"a profile named '{profile.name}' already exists ({origin}), and {path} would replace it")
    if clashes:
        raise ProfileError(
            "; ".join(clashes) + ": pass --replace to replace "
            + ("it and clear its scores" if len(clashes) == 1 else "them and clear their scores")
            + ", or give the new profile another name."
        )


def add_profiles(store: Store, profiles: list[Profile], paths: list[str] | None = None) -> list[tuple[str, str]]:
    """Store profiles with their rendered persona (and the file each came from, when ``paths`` are given).

    Returns:
        (name, outcome) per profile; outcome is "added", "updated" (persona changed, its scores were cleared)
        or "unchanged".
    """
    existing = {row.name for row in store.list_profiles()}
    sources = [str(Path(p).resolve()) for p in paths] if paths is not None else [None] * len(profiles)
    outcomes = []
    for profile, source in zip(profiles, sources, strict=True):
        _, changed = store.upsert_profile(profile, render_persona(profile), source)
        outcome = UNCHANGED if not changed else UPDATED if profile.name in existing else ADDED
        outcomes.append((profile.name, outcome))
    return outcomes


def profile_summaries(store: Store) -> list[ProfileSummary]:
    """One dict per stored profile: name, fields, scored (current model), updated_at."""
    counts = store.score_counts()
    return summaries_of(store.list_profiles(), counts)


def summaries_of(rows: list[ProfileRow], counts: dict[str, int]) -> list[ProfileSummary]:
    """:func:`profile_summaries` from the stored profiles and their score counts (the Store's or the quick read's)."""
    return [
        {
            "name": row.name,
            "fields": row.profile.to_dict(),
            "scored": counts.get(row.name, 0),
            "updated_at": row.updated_at.isoformat(timespec="seconds") + "Z",
        }
        for row in rows
    ]


def print_summaries(summaries: list[ProfileSummary], *, as_json: bool) -> None:
    """``profile list``'s output: JSON, or one "name<TAB>N scored" line per profile."""
    if as_json:
        print_json(summaries)
    elif not summaries:
        print("no profiles yet; add one with `pmllm-batch profile add FILE.toml`")
    else:
        for item in summaries:
            print(f"{item['name']}\t{item['scored']} scored")


def profile_detail(store: Store, name: str) -> ProfileDetail:
    """Fields, persona text and its hash of one profile.

    Raises:
        ProfileError: Unknown profile.
    """
    row = store.get_profile(name)
    return {
        "name": row.name,
        "fields": row.profile.to_dict(),
        "persona": row.persona,
        "persona_hash": row.persona_hash,
        "updated_at": row.updated_at.isoformat(timespec="seconds") + "Z",
        "ratings": ratings_summary(store, row.name),
    }


def ratings_summary(store: Store, name: str) -> RatingsSummary:
    """How many ratings a person has stored, per source, and how many of them are of photos in the library."""
    by_source = store.rating_counts().get(name, {})
    in_library = store.rating_counts(in_library=True).get(name, {})
    return {"total": sum(by_source.values()), "by_source": dict(sorted(by_source.items(), key=lambda kv: -kv[1])),
            "in_library": sum(in_library.values())}


def ratings_line(ratings: RatingsSummary) -> str:
    """``ratings: 12 (xmp-sidecar 9, cli 3)``, or ``ratings: none yet``."""
    if not ratings["total"]:
        return "ratings: none yet (`pmllm-batch rate` stores them)"
    sources = ", ".join(f"{source} {n}" for source, n in ratings["by_source"].items())
    waiting = ratings["total"] - ratings["in_library"]
    return f"ratings: {ratings['total']} ({sources})" + (
        f"; {waiting} of them wait{'s' if waiting == 1 else ''} for `rank` "
        f"({'its photo is' if waiting == 1 else 'their photos are'} not in the library)"
        if waiting else "")


def _format_value(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_format_value(v)}" for k, v in value.items())
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------------------------------------------------------------
# CLI adapter
# ---------------------------------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``profile`` and its actions."""
    parser = subparsers.add_parser(
        "profile",
        help="add, list, show or remove person profiles",
        description='Manage person profiles. A profile is a TOML file: name = "alice", age = 34, [big_five] ….',
    )
    actions = parser.add_subparsers(dest="profile_action", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="add or update profiles from TOML files",
        description="Add profiles from TOML files (every file is checked first: one bad file adds nothing). "
        "Re-adding a file after editing it updates that profile (a changed persona clears its scores); a different "
        "file with a name that is already stored is refused unless --replace is given.",
    )
    add.add_argument("files", nargs="+", metavar="FILE.toml", help="profile files (name = \"...\", age = 34, ...)")
    add.add_argument("--replace", action="store_true",
                     help="let a file replace a stored profile of the same name that came from another file")
    listing = actions.add_parser("list", help="list stored profiles")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = actions.add_parser("show", help="show one profile's fields and persona text")
    show.add_argument("name", metavar="NAME", help="a stored profile")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    remove = actions.add_parser("remove", help="remove a profile and its scores")
    remove.add_argument("name", metavar="NAME", help="a stored profile")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Adapter for ``profile``."""
    action = args.profile_action
    profiles = read_profiles(args.files) if action == "add" else []
    listing = quick.profile_listing(settings.db_url()) if action == "list" else None  # None: read by the Store
    if listing is not None:
        print_summaries(summaries_of(*listing), as_json=args.json)
        return 0
    from pmllm_batch.db import Store

    with Store(settings.db_url()) as store:
        if action == "add":
            check_replacements(store, profiles, args.files, replace=args.replace)
            for name, outcome in add_profiles(store, profiles, args.files):
                if not args.quiet:
                    print(f"{outcome} {name}" + (" (scores cleared)" if outcome == UPDATED else ""))
        elif action == "list":
            print_summaries(profile_summaries(store), as_json=args.json)
        elif action == "show":
            detail = profile_detail(store, args.name)
            if args.json:
                print_json(detail)
            else:
                out = [f"name: {detail['name']}"]
                out += [f"{key}: {_format_value(value)}" for key, value in detail["fields"].items() if key != "name"]
                out += [ratings_line(detail["ratings"]), "persona:", f"  {detail['persona']}"]
                sys.stdout.write("\n".join(out) + "\n")
        else:
            store.remove_profile(args.name)
            if not args.quiet:
                print(f"removed {args.name}")
    return 0


__all__ = ["add_profiles", "check_replacements", "profile_detail", "profile_summaries", "read_profiles", "register",
           "run"]
