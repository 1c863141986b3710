"""XMP sidecars in the daemon: learning a person's stars from the sidecars their apps write, and keeping ours fresh.

With ``[learn] xmp_profile = "NAME"`` (or, when that is empty, ``[xmp] profile``) every XMP sidecar under a watched
root is that person's: a sidecar that changes is a new rating, stored by :func:`pmllm_batch.scorer.rated.store_ratings`
(by content hash, source ``xmp-sidecar``), and since rankings are computed on read, their ranking follows at once.
One line says what was learned: "ana: 1 rating learned from IMG_1.jpg.xmp (4 stars)".

The rules (:class:`SidecarLearner`):

* Which events: a file named ``*.xmp`` / ``*.XMP`` in a folder the scan walks (created, written, moved there, or
  deleted) goes to its own settle tracker instead of the photo tracker, so an app that writes a sidecar several
  times in a row is read once, after ``[watch] settle`` seconds of quiet. A sidecar whose size, mtime and inode are
  what they were when it was last read is not read again.
* Which photos: ``photo.jpg.xmp`` is ``photo.jpg``'s; ``photo.xmp`` is every photo named ``photo.*`` in its folder (a
  RAW+JPEG pair shares it, and both get the verdict), exactly the namings :func:`pmllm_batch.ratings.read_xmp` reads.
  The verdict of each photo is then what ``rate --from-xmp`` would store: ``read_xmp`` of those photos (both
  namings, the one modified last wins, else XMP embedded in the photo). A sidecar whose photo is not there yet, or
  is still being copied (still waiting in the photo tracker), is read once the photo has been read.
* What is not a verdict: a rating equal to our ``pmllm:writtenRating`` (the stars the daemon wrote itself with
  ``[xmp] profile``), 0 or no rating, darktable's import default. Such a sidecar is parsed and left: the daemon's own
  sidecar writes store nothing, so they trigger nothing and cannot loop.
* Clearing (the person takes their stars back): a verdict stored from sidecar S is forgotten when S is read again
  and holds no verdict of the person any more (no rating, 0, darktable's import default, or a rating equal to our
  ``pmllm:writtenRating``: they set it back to the stars we suggested). Unless another sidecar of that photo or its
  embedded XMP now holds a verdict, which then replaces it. Kept: a verdict given on the command line, from a CSV,
  from darktable's or digiKam's database, or read from another sidecar; every verdict when S is deleted or moved
  (a photo moved with its sidecar keeps its rating, and the new sidecar is read where it arrives; a photo that stays
  takes the verdict of its other sidecar or embedded XMP, if one holds any), corrupt, or holds our written rating
  while ``[xmp] overwrite_ratings`` is on (then the daemon itself may have replaced their stars).
* At start and at every reconcile scan the sidecars under the roots are looked at too (stat only, once each has been
  read), so stars set while the daemon was not running are learned, and cleared ones forgotten, by the same rules.
* After a verdict is learned or forgotten, ``[xmp] profile``'s sidecars are refreshed (the stars of other photos
  move with the learned ranking) once the person has paused: no sidecar event for :data:`REFRESH_QUIET_S` seconds,
  so rating twenty photos in a row rewrites the library's sidecars once, not twenty times, and not while their app
  is writing. The person's own rating is never written over (:mod:`pmllm_batch.outputs.xmp`). The ranking itself
  needs no such step: rankings are computed on read, so ``rank`` shows the new verdict as soon as it is stored.

Layer: the daemon; ``pmllm_batch.ratings`` (readers) and ``pmllm_batch.scorer.rated`` (paths to content hashes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pmllm_batch.config import Settings
from pmllm_batch.daemon.batchlog import RunCounts, plural
from pmllm_batch.daemon.watcher import SettleTracker, Signature, file_signature
from pmllm_batch.db.ratings import RatingInput, StoredRating
from pmllm_batch.db.store import Store
from pmllm_batch.errors import ConfigError, ProfileError, UserError
from pmllm_batch.log import get_logger
from pmllm_batch.outputs.xmp import refresh_sidecars
from pmllm_batch.ratings import ReadResult, read_xmp
from pmllm_batch.ratings.xmp import XmpFormatError, judge_packet, parse_xmp, sidecar_candidates, stars_label
from pmllm_batch.scorer.rated import store_ratings

if TYPE_CHECKING:
    from pmllm_batch.scorer import PathFilter

log = get_logger("daemon")

__all__ = ["SidecarLearner", "is_sidecar", "learning_profile", "photos_of_sidecar", "refresh_xmp_sidecars"]

SOURCE = "xmp-sidecar"
SHOWN = 5  # sidecars named in one log line
REFRESH_QUIET_S = 5.0  # our sidecars are refreshed after a learned verdict once sidecar events were quiet this long


def refresh_xmp_sidecars(store: Store, settings: Settings) -> None:
    """``[xmp] profile = "NAME"``: keep that person's stars and everyone's keywords fresh in the sidecars.

    Every sidecar is looked at (new photos move older photos' percentile stars); only changed ones are written.
    A problem is logged and never stops the daemon.
    """
    if not settings.xmp.profile:
        return
    try:
        result = refresh_sidecars(store, settings)
    except UserError as exc:
        log.warning("xmp sidecars not refreshed: %s", exc)
        return
    problems = ", ".join(f"{n} {reason}" for reason, n in result.problem_counts().items())
    cleaned = result.cleaned_text()  # stale marks taken out: "2 sidecars cleaned: 2 left the ranking"
    log.info(
        "xmp sidecars for %s: %d created, %d updated, %d unchanged%s%s",
        result.profile,
        result.created,
        result.updated,
        result.unchanged,
        f"; {cleaned}" if cleaned else "",
        f"; problems: {problems}" if problems else "",
    )


def learning_profile(settings: Settings) -> tuple[str, str]:
    """Whose stars the sidecars under the watched roots are, and the setting that says so; ("", "") for nobody."""
    if settings.learn.xmp_profile:
        return settings.learn.xmp_profile, "[learn] xmp_profile"
    if settings.xmp.profile:
        return settings.xmp.profile, "[xmp] profile ([learn] xmp_profile is not set)"
    return "", ""


def is_sidecar(path: str | Path) -> bool:
    """Is this file name an XMP sidecar's (``*.xmp`` / ``*.XMP``, not hidden, more than the extension)?"""
    name = os.path.basename(path)
    return len(name) > 4 and name.lower().endswith(".xmp") and not name.startswith(".")


def photos_of_sidecar(sidecar: Path, names: Iterable[str]) -> list[Path]:
    """The files among ``names`` (its folder's entries) whose sidecar ``sidecar`` can be, by either naming:
    ``photo.jpg.xmp`` -> ``photo.jpg``; ``photo.xmp`` -> ``photo.jpg``, ``photo.cr2`` ... (every ``photo.*``)."""
    base = sidecar.name[:-4]
    return [sidecar.parent / n for n in sorted(names)
            if not is_sidecar(n) and (n == base or os.path.splitext(n)[0] == base)]


@dataclass
class _Plan:
    """What one look at a set of sidecars asks for."""

    photos: dict[Path, None] = field(default_factory=dict)  # to read (an ordered set)
    forget: list[Path] = field(default_factory=list)  # sidecars whose stored verdicts are gone, unless replaced
    listings: dict[Path, list[str]] = field(default_factory=dict)  # folder -> its entries


class SidecarLearner:
    """Learns one person's stars from the sidecars under the watched roots (see the module docstring).

    A no-op when no profile is configured (:attr:`active` is False). :meth:`offer` runs in the observer thread;
    everything else in the service's.

    Args:
        settings: ``[learn] xmp_profile``, ``[xmp] profile`` / ``overwrite_ratings``, ``[watch] settle`` / ``debounce``.
        store: The database.
        path_filter: The scan's rules: which folders are walked and which files are photos.
        photos: The photo tracker (a sidecar waits while its photo is still settling there).
        counts: The run's counters (``ratings_learned``, ``ratings_forgotten``).
    """

    def __init__(
        self, settings: Settings, store: Store, path_filter: PathFilter, photos: SettleTracker, counts: RunCounts
    ) -> None:
        self.settings = settings
        self.profile, self.key = learning_profile(settings)
        self.store = store
        self.filter = path_filter
        self.photos = photos
        self.counts = counts
        self.tracker = SettleTracker(settings.watch.settle, settings.watch.debounce)
        self.seen: dict[str, Signature] = {}  # sidecar -> its signature when it was last read
        self.refresh_quiet_s = REFRESH_QUIET_S
        self.refresh_due: float | None = None  # monotonic time of the pending refresh of our sidecars, if any

    @property
    def active(self) -> bool:
        return bool(self.profile)

    def check(self) -> None:
        """At start: the profile must exist.

        Raises:
            ConfigError: It is not a stored profile.
        """
        if not self.active:
            return
        try:
            self.store.get_profile(self.profile)
        except ProfileError:
            known = ", ".join(sorted(p.name for p in self.store.list_profiles())) or "none yet"
            raise ConfigError(
                f"{self.key} names the profile '{self.profile}', which is not stored (stored: {known}), so the "
                "daemon cannot learn its stars from the sidecars; add it with `pmllm-batch profile add FILE.toml` "
                "or fix the setting."
            ) from None

    # -- events -----------------------------------------------------------------------------------------------------

    def offer(self, path: str) -> bool:
        """Observer thread: take a sidecar's event (True), or leave the path to the photo tracker (False)."""
        if not self.active or not is_sidecar(path):
            return False
        if self.filter.wanted_dir(os.path.dirname(path)):
            self.tracker.touch(path)
        return True

    def photos_read(self, paths: Sequence[Path]) -> None:
        """A batch read these photos: their sidecars are read again (the photo may be new, or its content new)."""
        if not self.active:
            return
        for photo in paths:
            for sidecar, _naming in sidecar_candidates(photo):
                if os.path.isfile(sidecar):
                    self.seen.pop(str(sidecar), None)
                    self.tracker.touch(str(sidecar))

    def tick(self) -> None:
        """Learn from the sidecars that have settled, if any; refresh ours once sidecar events have been quiet."""
        if not self.active:
            return
        batch = self.tracker.take_batch()
        now = time.monotonic()
        if batch and self.learn(batch):
            self.refresh_due = now + self.refresh_quiet_s
        elif self.tracker.waiting and self.refresh_due is not None:
            self.refresh_due = max(self.refresh_due, now + self.refresh_quiet_s)  # still rating: wait for a pause
        if self.refresh_due is not None and now >= self.refresh_due:
            self.refresh_due = None
            refresh_xmp_sidecars(self.store, self.settings)

    def catch_up(self, roots: Sequence[Path], when: str) -> None:
        """A reconcile scan: read every sidecar under ``roots`` that changed since it was last read (all of them,
        the first time), so stars set or cleared while nobody watched are learned too."""
        if not self.active:
            return
        found: list[Path] = []
        for root in roots:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if self.filter.wanted_dir(os.path.join(dirpath, d)))
                found += [Path(dirpath, n) for n in sorted(filenames) if is_sidecar(n)]
        present = {str(p) for p in found}
        for path in [p for p in self.seen if p not in present and self.filter.root_of(p) in roots]:
            del self.seen[path]
        if self.learn(found, when=when):
            self.refresh_due = None
            refresh_xmp_sidecars(self.store, self.settings)

    # -- learning ---------------------------------------------------------------------------------------------------

    def learn(self, sidecars: Iterable[Path], *, when: str = "") -> bool:
        """Read what changed among ``sidecars``, store and forget verdicts, log one line; True when a stored verdict
        changed (``[xmp] profile``'s sidecars are then due for a refresh)."""
        changed = self._changed(sidecars)
        if not changed:
            return False
        try:
            before = self.store.ratings(self.profile)
        except ProfileError as exc:
            log.warning("%s: sidecars not learned from: %s", self.profile, exc)
            return False
        plan = self._plan(changed, before)
        if not plan.photos and not plan.forget:
            return False
        result = read_xmp(list(plan.photos))
        try:
            store_ratings(self.store, self.profile, result)
            forgotten = self._forget(plan.forget)
            after = self.store.ratings(self.profile)
        except UserError as exc:  # the profile was removed meanwhile
            log.warning("%s: sidecars not learned from: %s", self.profile, exc)
            return False
        details = {r.detail for r in result.ratings}
        learned = [a for h, a in after.items()
                   if a.detail in details and (h not in before or before[h].stars != a.stars)]
        self._say(result, learned, forgotten, when)
        self.counts.ratings_learned += len(learned)
        self.counts.ratings_forgotten += len(forgotten)
        return bool(learned or forgotten)

    def _changed(self, sidecars: Iterable[Path]) -> list[tuple[Path, Signature]]:
        """The sidecars not read before as they are now (and those read before that are gone now)."""
        out = []
        for sidecar in sidecars:
            sig = file_signature(str(sidecar))
            if sig != self.seen.get(str(sidecar)):  # None for both: never read, and gone
                out.append((sidecar, sig))
        return out

    def _plan(self, sidecars: list[tuple[Path, Signature]], stored: dict[str, StoredRating]) -> _Plan:
        """Which photos to read and which sidecars' stored verdicts may be forgotten."""
        plan = _Plan()
        named = {r.detail for r in stored.values() if r.source == SOURCE}  # sidecars a stored verdict came from
        waiting = set(self.photos.waiting_paths())
        for sidecar, sig in sidecars:
            key = str(sidecar)
            photos = self._photos(sidecar, plan.listings)
            if sig is None:  # gone: nothing is forgotten (a photo moved with its sidecar keeps its rating), but the
                self.seen.pop(key, None)  # photo's other sidecar or embedded XMP may hold a verdict now
                if key in named:
                    plan.photos.update(dict.fromkeys(photos))
                continue
            if not photos:
                continue  # its photo is not here (yet): the photo's arrival brings the sidecar back (photos_read)
            if any(str(p) in waiting for p in photos):
                self.tracker.touch(key)  # the photo is still being copied: read both once it has settled
                continue
            self.seen[key] = sig
            kind = self._kind(sidecar)
            if kind == "verdict" or (kind is not None and key in named):
                plan.photos.update(dict.fromkeys(photos))
            cleared = kind in ("unrated", "default") or (kind == "ours" and not self.settings.xmp.overwrite_ratings)
            if key in named and cleared:
                plan.forget.append(sidecar)
        return plan

    def _photos(self, sidecar: Path, listings: dict[Path, list[str]]) -> list[Path]:
        folder = sidecar.parent
        if folder not in listings:
            try:
                listings[folder] = os.listdir(folder)
            except OSError:
                listings[folder] = []
        return [p for p in photos_of_sidecar(sidecar, listings[folder]) if self._is_photo(p)]

    def _is_photo(self, path: Path) -> bool:
        kind = self.filter.classify(path)
        return path.is_file() and (kind == "photo" or (kind == "sniff" and self.filter.is_image(path)))

    def _kind(self, sidecar: Path) -> str | None:
        """What the sidecar itself says (:class:`~pmllm_batch.ratings.xmp.XmpVerdict` kind); None when it cannot be
        read (said once per version of the file; stored verdicts stay)."""
        try:
            kind = judge_packet(parse_xmp(sidecar.read_bytes())).kind
        except (OSError, XmpFormatError) as exc:
            log.warning("%s: %s not learned from: %s; stored stars stay as they are", self.profile, sidecar, exc)
            return None
        if kind == "bad":
            log.warning("%s: %s not learned from: its xmp:Rating is not a whole number in -1..5", self.profile,
                        sidecar)
            return None
        return kind

    def _forget(self, sidecars: list[Path]) -> list[Path]:
        """Forget the verdicts still stored from these sidecars (none was replaced by this read); the sidecars of
        the verdicts forgotten."""
        if not sidecars:
            return []
        wanted = {str(s): s for s in sidecars}
        items = [(r, wanted[r.detail]) for r in self.store.ratings(self.profile).values()
                 if r.source == SOURCE and r.detail in wanted]
        if items:
            self.store.set_ratings(self.profile, [RatingInput(r.content_hash, 0, SOURCE, r.detail) for r, _ in items])
        return [s for _, s in items]

    def _say(self, result: ReadResult, learned: list[StoredRating], forgotten: list[Path], when: str) -> None:
        """One line for what changed; a warning per sidecar that could not be read; the reader's notes."""
        for skipped in result.skipped:
            log.warning("%s: %s not learned from: %s", self.profile, skipped.path, skipped.message)
        for note in result.notes:
            log.info("%s: %s", self.profile, note)
        parts = []
        if learned:
            groups: dict[tuple[str, int], int] = {}
            for r in learned:
                name = os.path.basename(r.detail or "") if r.source == SOURCE else f"{r.detail or r.source}"
                groups[(name, r.stars)] = groups.get((name, r.stars), 0) + 1
            shown = [f"{name} ({stars_label(stars)})" for name, stars in list(groups)[:SHOWN]]
            more = f" and {plural(len(groups) - SHOWN, 'more sidecar')}" if len(groups) > SHOWN else ""
            parts.append(f"{plural(len(learned), 'rating')} learned from {', '.join(shown)}{more}")
        if forgotten:
            names = sorted({s.name for s in forgotten})
            shown_f = ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
            parts.append(f"{plural(len(forgotten), 'rating')} forgotten (the stars in {shown_f} were cleared)")
        if parts:
            log.info("%s: %s%s", self.profile, "; ".join(parts), f" ({when})" if when else "")
