"""Read the ratings a person already set in their photo apps ("learn each person's taste from their own stars").

Pure readers: they open files and other applications' databases read-only, write nothing and keep no database of
ours (the ``rate`` command stores what they return). Layer: ground (config, contracts, errors, log) plus exiv2,
sqlite3 and csv only.

Results
-------
Every reader returns a :class:`ReadResult`: ``ratings`` (:class:`Rating`: photo path, stars, source, detail),
``skipped`` (:class:`Skipped`: path, short reason from :data:`REASONS`, one sentence), ``unrated`` (a count) and
``notes`` (sentences about choices made). A bad source (corrupt sidecar, not a database, a bad CSV row) is skipped
with a reason and the run goes on; "unrated" is neither a rating nor a skip. ``stars``: -1 rejected, 1..5; 0
("clear": forget the stored rating) only from the "csv" and "cli" sources.

Sources
-------
* :func:`read_xmp` (``xmp-sidecar``, ``xmp-embedded``): for each photo its sidecars in both namings,
  ``photo.jpg.xmp`` (digiKam, darktable) and ``photo.xmp`` (Lightroom, Bridge; shared by a RAW+JPEG pair, so both
  files get its verdict), each also as ``.XMP``; when no sidecar holds a verdict, the XMP embedded in the photo.
  Each photo ends in exactly one of ratings / skipped / unrated; a photo with a corrupt or unreadable sidecar is
  skipped as a whole (that sidecar may hold the latest verdict). darktable's sidecars of duplicates
  (``photo_01.jpg.xmp``) are not read: the original's verdict counts, as in ``read_darktable``. Lightroom's
  pick/reject flag is not written to XMP by Lightroom, so only its stars arrive.
* :func:`read_darktable` (``darktable``): ``library.db``; stars ``images.flags & 7``, rejected ``flags & 8``
  (darktable >= 3.0) or ``flags & 7 == 6`` (before 3.0); path ``film_rolls.folder + "/" + images.filename``; of
  several versions (duplicates) of one file, the original's (lowest version) rating counts.
* :func:`read_digikam` (``digikam``): ``digikam4.db``; ``ImageInformation.rating`` 1..5, the internal tag
  "Pick Label Rejected" (under "_Digikam_Internal_Tags_") -> -1; path = collection folder (``AlbumRoots``) +
  ``Albums.relativePath`` + ``Images.name``.
* :func:`read_csv` (``csv``): ``path,stars``, header optional, -1..5 with 0 = clear, bad rows skipped with
  their line number. :func:`cli_rating` (``cli``): one photo typed on the command line.

What counts as the person's verdict
-----------------------------------
* ``xmp:Rating``: 1..5 stars, -1 rejected, 0 or absent unrated. digiKam's ``digiKam:PickLabel``
  (http://www.digikam.org/ns/1.0/) 1 = rejected -> -1 whatever the stars; 2 (pending) and 3 (accepted) carry no
  stars and are ignored. A value that is not a whole number in -1..5 -> skipped ("bad_rating").
* Ours, not theirs: a sidecar whose ``xmp:Rating`` equals our ``pmllm:writtenRating`` (namespace of
  pmllm_batch.outputs.xmp) holds the stars *we* wrote: unrated (counted in ``written_by_us``).
* Two sidecars that disagree (``photo.jpg.xmp`` and ``photo.xmp`` with different verdicts): the one modified last
  wins, since it holds the person's latest verdict; on equal modification times ``photo.jpg.xmp`` wins. A note
  names both and why. Only sidecars holding a verdict compete (an unrated, ours or import-default sidecar never
  overrides the other's stars). A sidecar verdict wins over embedded XMP (embedded is read only when no sidecar
  holds one).
* darktable's import default. darktable gives every photo it imports without a rating its *initial import
  rating* (``ui_last/import_initial_rating``, default 1) and, with its default ``write_sidecar_files=on import``,
  writes a sidecar for every imported photo at once. What darktable 4.2.1 actually wrote
  (tests/fixtures/ratings/darktable/README.txt and EVIDENCE.txt, made by scripts/make_app_fixtures.sh): a photo
  rated 1 by that default, a photo whose earlier sidecar already said 1, and a photo set to 1 inside darktable
  afterwards all get ``images.flags`` 1057 (1 star) and sidecars with ``xmp:Rating="1"``;
  ``darktable:change_timestamp`` stays -1 (rating changes do not touch it) and darktable keeps no "rated by hand"
  mark. The sidecars differ only in timestamps, file name and ``darktable:iop_order_version`` (1 where darktable
  found an earlier sidecar, 2 for a photo without one): that says an earlier sidecar existed, not that it held a
  rating, and an edit changes it, so it is not used; neither is ``images.write_timestamp`` (any edit, tag or label
  moves it). Nothing tells a default 1 from a chosen 1, so the rule is: **a darktable rating equal to the import
  default is no verdict** (unrated, counted in ``import_defaults``), in sidecars carrying darktable's namespace
  (``darktable:*`` properties) and in ``library.db`` alike. ``read_darktable`` takes the default from the
  ``darktablerc`` beside the library (else 1), ``read_xmp`` assumes 1; both accept ``darktable_default=`` (0 turns
  the rule off). The cost: a person's deliberate 1-star ratings in darktable are lost; 2..5 and rejects
  are kept, and darktable's rejects are a bit (``flags & 8``), never a default.
* digiKam has no import default: a new photo gets rating -1 ("no rating") unless its metadata holds one, so
  -1, 0 and NULL are unrated and every 1..5 is the person's (or their earlier app's, carried over by digiKam).
"""

from __future__ import annotations

from pmllm_batch.ratings.darktable import read_darktable
from pmllm_batch.ratings.digikam import read_digikam
from pmllm_batch.ratings.model import REASONS, SOURCES, Rating, ReadResult, Skipped
from pmllm_batch.ratings.tabular import cli_rating, read_csv
from pmllm_batch.ratings.xmp import read_xmp

__all__ = [
    "REASONS",
    "SOURCES",
    "Rating",
    "ReadResult",
    "Skipped",
    "cli_rating",
    "read_csv",
    "read_darktable",
    "read_digikam",
    "read_xmp",
]
