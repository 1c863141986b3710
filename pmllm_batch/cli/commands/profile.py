"""``pmllm-batch profile add|list|show|remove``: manage the stored person profiles."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pmllm_batch.config import Settings
from pmllm_batch.db import Store
from pmllm_batch.errors import ProfileError
from pmllm_batch.model.prompts import render_persona
from pmllm_batch.profiles import Profile, load_profile

from . import print_json

ADDED, UPDATED, UNCHANGED = "added", "updated", "unchanged"


# ---------------------------------------------------------------------------------------------------------------------
# Work
# ---------------------------------------------------------------------------------------------------------------------


def read_profiles(paths: list[str]) -> list[Profile]:
    """Validate every file before anything is stored, so one bad file stores nothing.

    Raises:
        ProfileError: A file is unreadable or invalid, or two files use the same name.
    """
    profiles: list[Profile] = []
    seen: dict[str, str] = {}
    for path in paths:
        profile = load_profile(path)
        if profile.name in seen:
            raise ProfileError(f"{path} and {seen[profile.name]} both define the profile '{profile.name}'.")
        seen[profile.name] = path
        profiles.append(profile)
    return profiles


def add_profiles(store: Store, profiles: list[Profile]) -> list[tuple[str, str]]:
    """Store profiles with their rendered persona.

    Returns:
        (name, outcome) per profile; outcome is "added", "updated" (persona changed, its scores were cleared)
        or "unchanged".
    """
    existing = {row.name for row in store.list_profiles()}
    outcomes = []
    for profile in profiles:
        _, changed = store.upsert_profile(profile, render_persona(profile))
        outcome = UNCHANGED if not changed else UPDATED if profile.name in existing else ADDED
        outcomes.append((profile.name, outcome))
    return outcomes


def profile_summaries(store: Store) -> list[dict[str, Any]]:
    """One dict per stored profile: name, fields, scored (current model), updated_at."""
    counts = store.score_counts()
    return [
        {
            "name": row.name,
            "fields": row.profile.to_dict(),
            "scored": counts.get(row.name, 0),
            "updated_at": row.updated_at.isoformat(timespec="seconds") + "Z",
        }
        for row in store.list_profiles()
    ]


def profile_detail(store: Store, name: str) -> dict[str, Any]:
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
    }


def _format_value(value: Any) -> str:
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
    add = actions.add_parser("add", help="add or update profiles from TOML files")
    add.add_argument("files", nargs="+", metavar="FILE.toml")
    listing = actions.add_parser("list", help="list stored profiles")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = actions.add_parser("show", help="show one profile's fields and persona text")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    remove = actions.add_parser("remove", help="remove a profile and its scores")
    remove.add_argument("name", metavar="NAME")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Adapter for ``profile``."""
    action = args.profile_action
    profiles = read_profiles(args.files) if action == "add" else []
    with Store(settings.db_url()) as store:
        if action == "add":
            for name, outcome in add_profiles(store, profiles):
                print(f"{outcome} {name}" + (" (scores cleared)" if outcome == UPDATED else ""))
        elif action == "list":
            summaries = profile_summaries(store)
            if args.json:
                print_json(summaries)
            elif not summaries:
                print("no profiles yet; add one with `pmllm-batch profile add FILE.toml`")
            else:
                for item in summaries:
                    print(f"{item['name']}\t{item['scored']} scored")
        elif action == "show":
            detail = profile_detail(store, args.name)
            if args.json:
                print_json(detail)
            else:
                out = [f"name: {detail['name']}"]
                out += [f"{key}: {_format_value(value)}" for key, value in detail["fields"].items() if key != "name"]
                out += ["persona:", f"  {detail['persona']}"]
                sys.stdout.write("\n".join(out) + "\n")
        else:
            store.remove_profile(args.name)
            print(f"removed {args.name}")
    return 0


__all__ = ["add_profiles", "profile_detail", "profile_summaries", "read_profiles", "register", "run"]
