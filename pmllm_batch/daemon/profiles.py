"""The profiles the service scores for, re-read whenever the stored profiles change (from another shell)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pmllm_batch.db.store import ProfileRow, Store
from pmllm_batch.errors import ProfileError
from pmllm_batch.log import get_logger

log = get_logger("daemon")


@dataclass(frozen=True)
class ProfileChange:
    """What a re-read of the profiles found."""

    what: str  # "added NAME; changed NAME; removed NAME", or "metadata only"
    rescore: bool  # a profile was added or its persona changed: pairs are left to score


def describe_change(before: Mapping[str, str], after: Mapping[str, str]) -> ProfileChange:
    """Compare two ``{name: persona hash}`` maps."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(n for n in set(after) & set(before) if after[n] != before[n])
    parts = [f"{label} {', '.join(names)}" for label, names in
             (("added", added), ("changed", changed), ("removed", removed)) if names]
    return ProfileChange("; ".join(parts) or "metadata only", bool(added or changed))


class ProfileSet:
    """The profile rows to score for: the named ones, or every stored profile (also ones added later).

    Args:
        store: The database.
        names: Only these profiles; None = every stored profile.
    """

    def __init__(self, store: Store, names: list[str] | None) -> None:
        self.store = store
        self.names = names
        self.rows: list[ProfileRow] = []
        self.version: str | None = None  # Store.profiles_version() when ``rows`` were read

    def load(self, *, initial: bool = False) -> list[ProfileRow]:
        """Read the rows. Initially an unknown name raises; later a vanished one is logged and left out.

        Raises:
            ProfileError: ``initial`` and a named profile does not exist.
        """
        version = self.store.profiles_version()
        if self.names:
            rows = []
            for name in self.names:
                try:
                    rows.append(self.store.get_profile(name))
                except ProfileError:
                    if initial:
                        raise
                    log.warning("profile '%s' no longer exists; not scoring for it", name)
        else:
            rows = self.store.list_profiles()
            if initial and not rows:
                log.warning("no profiles are stored yet: photos are indexed now and scored once a profile is "
                            "added (`pmllm-batch profile add FILE.toml`)")
        self.rows, self.version = rows, version
        return rows

    def changed(self) -> bool:
        """Did any stored profile change since the rows were read (one indexed read)?"""
        return self.store.profiles_version() != self.version

    def reload(self) -> ProfileChange:
        """Read the rows again and say what changed."""
        before = {p.name: p.persona_hash for p in self.rows}
        after = {p.name: p.persona_hash for p in self.load()}
        return describe_change(before, after)


__all__ = ["ProfileChange", "ProfileSet", "describe_change"]
