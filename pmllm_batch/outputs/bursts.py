"""Bursts collapsed: what people see of a ranking, each burst once, RAW+JPEG pairs and copies as one photo, only the
part asked for.

Every output (``rank``, ``export``, ``albums``, ``report``, ``xmp``) reads a person's ranking through
:class:`RankingView`:

* **one photo, every file**: each row lists all files of its content (``paths``): exact duplicates (the same bytes at
  several paths) and the RAW twin of a RAW+JPEG pair (the scan stores the RAW as ``raw_pair``; its JPEG is ranked);
* **bursts and near-duplicates once** (unless ``group=False``, the ``--no-group`` flag): photos the scorer linked
  (the ``photo_links`` table, :mod:`pmllm_batch.db.links`) form a group, shown by the member this person scored best,
  with ``group_size`` and the other members' paths (``group``); another person may see another member of the same
  group;
* **scope** (:class:`~pmllm_batch.outputs.scope.Scope`): folders and a capture-date range;
* **the person's own stars** (:mod:`pmllm_batch.outputs.personal`): the ranking is the learned one (the profile-only
  one with ``zero_shot=True`` or ``[learn] enabled = false``, or when the person rated nothing); a photo they rated
  higher is never below one they rated lower, and a photo they rejected is at the bottom of :meth:`RankingView.full`
  and never in a top-N view (:meth:`RankingView.ranking` with ``top``: ``rank --top``, albums, the report's top);
  :meth:`RankingView.stars` gives rated photos the person's own stars (a rejection: -1), never ours.

Groups are connected components of the links among the photos of the person's whole ranking, so a burst split by a
scope is still one group (shown by its best member inside the scope).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pmllm_batch.config import LearnSettings
from pmllm_batch.db import RankedPhoto, Store
from pmllm_batch.outputs.personal import Learned, personalize
from pmllm_batch.outputs.scope import Scope
from pmllm_batch.outputs.stars import DEFAULT_SHARES, stars_by_hash
from pmllm_batch.scan.raw import twin_key

__all__ = ["RankingView", "TopChange", "components"]


@dataclass(frozen=True)
class TopChange:
    """What a person's stars changed in the first ``top`` places of a view, against the profile-only ranking."""

    top: int
    entered: int  # photos (groups) in the learned top that the profile-only top did not have
    left: int  # photos (groups) of the profile-only top that are not in the learned one (rejected ones too)

    def describe(self) -> str:
        """``"4 photos entered your top 10, 4 left"`` or ``"your top 10 has the same photos"``."""
        if not self.entered and not self.left:
            return f"your top {self.top} has the same photos"
        photos = "photo" if self.entered == 1 else "photos"
        return f"{self.entered} {photos} entered your top {self.top}, {self.left} left"


def components(hashes: Iterable[str], links: Iterable[tuple[str, str, float]]) -> dict[str, str]:
    """Content hash -> its group's id (the smallest hash in it), over links between ``hashes`` only."""
    members = set(hashes)
    parent = {h: h for h in members}

    def find(h: str) -> str:
        while parent[h] != h:
            parent[h] = parent[parent[h]]
            h = parent[h]
        return h

    for a, b, _ in links:
        if a in members and b in members:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return {h: find(h) for h in members}


class RankingView:
    """Rankings as an output shows them. Reads the links and RAW twins once; then :meth:`ranking` per person.

    Args:
        store: The library database.
        group: Show each burst / near-duplicate group once (False: every photo, ``--no-group``).
        scope: Only photos in these folders and dates (default: everything).
        learn: ``[learn]`` settings (default :class:`~pmllm_batch.config.LearnSettings`: each person's ranking
            learns from their own stars).
        zero_shot: The profile-only rankings, whatever people rated (``--zero-shot``).
    """

    def __init__(
        self, store: Store, *, group: bool = True, scope: Scope | None = None, learn: LearnSettings | None = None,
        zero_shot: bool = False,
    ) -> None:
        self.store = store
        self.group = group
        self.scope = scope or Scope()
        self.learn = learn if learn is not None else LearnSettings()
        self.zero_shot = zero_shot
        self.twins = store.raw_twins()
        self.links = store.group_links(store.current_vision_id()) if group else []
        # (profile, model id) -> (profile-only ranking, the person's ranking, what it learned from)
        self._read: dict[tuple[str, int | None], tuple[list[RankedPhoto], list[RankedPhoto], Learned]] = {}

    def files(self, item: RankedPhoto) -> tuple[str, ...]:
        """Every file of ``item``'s photo: its paths (exact duplicates) and their RAW twins."""
        paths = list(item.paths or (item.path,))
        for p in list(paths):
            paths.extend(t for t in self.twins.get(twin_key(p), ()) if t not in paths)
        return tuple(paths)

    def _personal(self, profile: str, model_id: int | None) -> tuple[list[RankedPhoto], list[RankedPhoto], Learned]:
        """The person's whole rankings (profile-only and learned), read once per view."""
        key = (profile, model_id)
        if key not in self._read:
            base = self.store.ranking(profile, model_id=model_id)
            rows, learned = personalize(self.store, profile, base, model_id=model_id, learn=self.learn,
                                        zero_shot=self.zero_shot)
            self._read[key] = (base, rows, learned)
        return self._read[key]

    def learned(self, profile: str, *, model_id: int | None = None) -> Learned:
        """What ``profile``'s ranking in this view learned from (``describe()``: the words the outputs show)."""
        return self._personal(profile, model_id)[2]

    def full(self, profile: str, *, model_id: int | None = None) -> list[RankedPhoto]:
        """The person's whole ranking (no scope), grouped (unless ``group=False``), ranks 1..n: what stars are
        computed from. Rejected photos are in it, at the bottom."""
        return self._view(self._personal(profile, model_id)[1], Scope())

    def stars(
        self, profile: str, shares: Sequence[float] = DEFAULT_SHARES, *, model_id: int | None = None
    ) -> dict[str, int]:
        """Content hash -> stars of every row of :meth:`full`: by rank percentile, except that a photo the person
        rated has their own stars (-1: rejected; never our 5)."""
        out = stars_by_hash(self.full(profile, model_id=model_id), shares)
        for h, stars in self.learned(profile, model_id=model_id).verdicts.items():
            if h in out:
                out[h] = stars
        return out

    def ranking(
        self, profile: str, *, top: int | None = None, model_id: int | None = None, renumber: bool = True
    ) -> list[RankedPhoto]:
        """The person's ranking in this view: scoped, grouped, best first.

        Args:
            profile: A stored profile.
            top: Keep the first ``top`` rows; a photo the person rejected is never among them.
            model_id: Whose scores (default: the current model).
            renumber: Ranks 1..n within the view (what every output shows); False keeps each photo's rank in
                :meth:`full` (where a scoped photo stands in the whole ranking).

        Raises:
            ProfileError: Unknown profile.
        """
        _, ranking, learned = self._personal(profile, model_id)
        shown = self._view(ranking, self.scope, top=top if renumber else None)
        if not renumber:
            place = {r.content_hash: r.rank for r in self._view(ranking, Scope())}
            shown = [dataclasses.replace(r, rank=place.get(r.content_hash, r.rank)) for r in shown]
        if top is None:
            return shown
        rejected = learned.rejected
        return [r for r in shown if r.content_hash not in rejected][: max(top, 0)]

    def top_change(self, profile: str, top: int, *, model_id: int | None = None) -> TopChange:
        """How the person's stars changed the first ``top`` places of this view against the profile-only ranking
        (bursts compared as groups: another member of the same group is the same entry)."""
        base, _, _ = self._personal(profile, model_id)
        before = self._view(base, self.scope, top=top)[:top]
        after = self.ranking(profile, top=top, model_id=model_id)
        group_of = components((r.content_hash for r in base), self.links) if self.group and self.links else {}
        was = {group_of.get(r.content_hash, r.content_hash) for r in before}
        now = {group_of.get(r.content_hash, r.content_hash) for r in after}
        return TopChange(top=top, entered=len(now - was), left=len(was - now))

    def _view(self, ranking: Sequence[RankedPhoto], scope: Scope, top: int | None = None) -> list[RankedPhoto]:
        """``ranking`` (best first) scoped and grouped, ranks 1..n. With ``top``, rows that can no longer reach the
        first ``top`` places are skipped unread (a 20,000-photo ranking shown as its top 10 reads about 10 rows),
        but every member of a shown group is still counted."""
        grouped = bool(self.group and self.links)
        group_of = components((r.content_hash for r in ranking), self.links) if grouped else {}
        rows: list[RankedPhoto] = []
        shown: set[str] = set()  # groups (or photos) with a row, in order of their best member
        for item in ranking:
            g = group_of.get(item.content_hash, item.content_hash)
            if top is not None and len(shown) >= top and g not in shown:
                if not grouped:
                    break  # nothing below can enter the first ``top`` places
                continue  # only members of groups already shown still count
            files = self.files(item)
            inside = scope.paths_in(files) if scope.under is not None else list(files)
            if not inside or not scope.when_in(item.taken_at, item.mtime_ns):
                continue
            shown.add(g)
            path = item.path if item.path in inside else inside[0]
            rows.append(dataclasses.replace(item, path=path, paths=(path, *[f for f in files if f != path])))
        if grouped:
            best: dict[str, RankedPhoto] = {}
            members: dict[str, list[str]] = {}
            order: list[str] = []
            for r in rows:  # best first: the first member seen is the person's best of its group
                g = group_of.get(r.content_hash, r.content_hash)
                if g not in best:
                    best[g] = r
                    order.append(g)
                    members[g] = []
                else:
                    members[g].append(r.path)
            rows = [dataclasses.replace(best[g], group_size=1 + len(members[g]), group=tuple(members[g]))
                    for g in order]
        return [dataclasses.replace(r, rank=i) for i, r in enumerate(rows, start=1)]
