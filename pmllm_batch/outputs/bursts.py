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
* **scope** (:class:`~pmllm_batch.outputs.scope.Scope`): folders and a capture-date range.

Groups are connected components of the links among the photos of the person's whole ranking, so a burst split by a
scope is still one group (shown by its best member inside the scope).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from pmllm_batch.db import RankedPhoto, Store
from pmllm_batch.outputs.scope import Scope
from pmllm_batch.scan.raw import twin_key

__all__ = ["RankingView", "components"]


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
    """

    def __init__(self, store: Store, *, group: bool = True, scope: Scope | None = None) -> None:
        self.store = store
        self.group = group
        self.scope = scope or Scope()
        self.twins = store.raw_twins()
        self.links = store.group_links(store.current_vision_id()) if group else []

    def files(self, item: RankedPhoto) -> tuple[str, ...]:
        """Every file of ``item``'s photo: its paths (exact duplicates) and their RAW twins."""
        paths = list(item.paths or (item.path,))
        for p in list(paths):
            paths.extend(t for t in self.twins.get(twin_key(p), ()) if t not in paths)
        return tuple(paths)

    def full(self, profile: str, *, model_id: int | None = None) -> list[RankedPhoto]:
        """The person's whole ranking (no scope), grouped (unless ``group=False``), ranks 1..n: what stars are
        computed from."""
        return self._view(self.store.ranking(profile, model_id=model_id), Scope())

    def ranking(
        self, profile: str, *, top: int | None = None, model_id: int | None = None, renumber: bool = True
    ) -> list[RankedPhoto]:
        """The person's ranking in this view: scoped, grouped, best first.

        Args:
            profile: A stored profile.
            top: Keep the first ``top`` rows.
            model_id: Whose scores (default: the current model).
            renumber: Ranks 1..n within the view (what every output shows); False keeps each photo's rank in
                :meth:`full` (where a scoped photo stands in the whole ranking).

        Raises:
            ProfileError: Unknown profile.
        """
        ranking = self.store.ranking(profile, model_id=model_id)
        shown = self._view(ranking, self.scope, top=top if renumber else None)
        if not renumber:
            place = {r.content_hash: r.rank for r in self._view(ranking, Scope())}
            shown = [dataclasses.replace(r, rank=place.get(r.content_hash, r.rank)) for r in shown]
        return shown[: max(top, 0)] if top is not None else shown

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
