#!/usr/bin/env bash
# Regenerate the ratings fixtures of tests/test_ratings_ingest.py under tests/fixtures/ratings/ (or OUT_DIR):
#   darktable/  what the real darktable wrote on importing a folder of 4 tiny JPEGs whose earlier sidecars (another
#               app's) say 5, 2 and -1 for three of them and nothing for the fourth: its library.db (VACUUMed into
#               1 KiB pages, schema and rows kept) and darktablerc in config/, the photos and the sidecars darktable
#               wrote in photos/, README.txt; EVIDENCE.txt from a second run: does anything tell darktable's import
#               default of 1 star from a 1 the person set?
#   digikam/    digikam4.db built from digiKam's own CREATE TABLE statements (scripts/make_app_fixtures.py).
# darktable runs under Xvfb with a private HOME, config and cache (nothing of the user's is touched), in a private
# D-Bus session: it is asked to quit over D-Bus (org.darktable.service.Remote.Quit) so it closes its library
# cleanly; SIGTERM does not stop darktable 4.2. darktable-cli cannot be used: it imports nothing into a library.
# Needs: darktable (Debian: 4.2.1), xvfb-run, dbus-run-session + gdbus, sqlite3, python3 with Pillow:
#   apt-get install -y darktable xvfb xauth sqlite3
# Usage: scripts/make_app_fixtures.sh [OUT_DIR]
set -euo pipefail

if [ "${1:-}" = "--inside" ]; then
  # Inside xvfb-run + dbus-run-session: import WORK/photos into WORK/config/library.db, wait until darktable holds
  # N images and wrote their sidecars, run each LUA command over D-Bus (output to WORK/lua.log), then quit.
  WORK=$2 N=$3
  shift 3
  darktable --library "$WORK/config/library.db" --configdir "$WORK/config" --cachedir "$WORK/cache" \
    "$WORK/photos" >"$WORK/darktable.log" 2>&1 &
  dt=$!
  n=0
  for _ in $(seq 1 120); do  # 60 s
    n=$(sqlite3 "file:$WORK/config/library.db?mode=ro" "SELECT count(*) FROM images" 2>/dev/null || echo 0)
    xmps=$(find "$WORK/photos" -name '*.jpg.xmp' -newer "$WORK/started" | wc -l)
    [ "$n" = "$N" ] && [ "$xmps" = "$N" ] && break
    kill -0 "$dt" 2>/dev/null || { echo "darktable exited early; see $WORK/darktable.log" >&2; exit 1; }
    sleep 0.5
  done
  if [ "$n" != "$N" ]; then echo "darktable imported $n of $N images within 60 s" >&2; kill -KILL "$dt"; exit 1; fi
  sleep 2  # let the import job finish its last writes
  : >"$WORK/lua.log"
  for cmd in "$@"; do
    echo "> $cmd" >>"$WORK/lua.log"
    gdbus call --session --dest org.darktable.service --object-path /darktable \
      --method org.darktable.service.Remote.Lua "$cmd" >>"$WORK/lua.log"
    sleep 2
  done
  gdbus call --session --dest org.darktable.service --object-path /darktable \
    --method org.darktable.service.Remote.Quit >/dev/null
  for _ in $(seq 1 60); do kill -0 "$dt" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$dt" 2>/dev/null; then
    echo "darktable did not quit within 30 s of the D-Bus Quit; killed" | tee "$WORK/quit.txt" >&2
    kill -KILL "$dt"
  else
    echo "quit over D-Bus (org.darktable.service.Remote.Quit)" >"$WORK/quit.txt"
  fi
  wait "$dt" || true
  exit 0
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/tests/fixtures/ratings}
HELPER="$REPO/scripts/make_app_fixtures.py"
for tool in darktable xvfb-run dbus-run-session gdbus sqlite3 python3; do
  command -v "$tool" >/dev/null || { echo "make_app_fixtures: $tool not found (apt-get install -y darktable xvfb xauth sqlite3)" >&2; exit 1; }
done
DT_VERSION=$(HOME=/tmp darktable --version 2>/dev/null | sed -n "s/^this is darktable //p" | head -1 || true)

# Fixed work folders: the film roll's folder is stored in library.db and the tests map it to the fixture's folder.
WORK=/tmp/pmllm-ratings-darktable
EVID=/tmp/pmllm-ratings-darktable-evidence

run_darktable() {  # WORK N LUA...: a fresh darktable world in WORK, photos already in WORK/photos
  local work=$1
  mkdir -p "$work/config" "$work/cache" "$work/home"
  touch "$work/started"; sleep 1  # sidecars newer than this are darktable's
  HOME="$work/home" XDG_CONFIG_HOME="$work/home/.config" XDG_CACHE_HOME="$work/home/.cache" LANG=C.UTF-8 \
    timeout 180 xvfb-run -a dbus-run-session -- "$REPO/scripts/make_app_fixtures.sh" --inside "$@" \
    >"$work/session.log" 2>&1 || { cat "$work/session.log" >&2; echo "darktable run in $work failed" >&2; exit 1; }
}

# 1. The fixture: 4 photos, earlier sidecars say 5, 2, -1 and nothing.
rm -rf "$WORK"
python3 "$HELPER" photos "$WORK/photos" a=5 b=2 c=-1 d=-
run_darktable "$WORK" 4
DT="$OUT/darktable"
rm -rf "$DT"
mkdir -p "$DT/config" "$DT/photos"
python3 "$HELPER" shrink "$WORK/config/library.db" "$DT/config/library.db"
cp "$WORK/config/darktablerc" "$DT/config/darktablerc"
cp -p "$WORK"/photos/*.jpg "$WORK"/photos/*.jpg.xmp "$DT/photos/"
ORIG_SIZE=$(stat -c %s "$WORK/config/library.db")
ORIG_PAGE=$(sqlite3 "file:$WORK/config/library.db?mode=ro" "PRAGMA page_size")
ROWS=$(sqlite3 -separator ' ' "file:$WORK/config/library.db?mode=ro" \
  "SELECT i.id, f.folder || '/' || i.filename, 'flags=' || i.flags, 'stars=' || (i.flags & 7), 'reject=' || ((i.flags & 8) != 0) FROM images i JOIN film_rolls f ON f.id = i.film_id ORDER BY i.id")

# 2. The evidence: a default 1, a 1 from an earlier sidecar, a 1 set inside darktable, a 0.
rm -rf "$EVID"
python3 "$HELPER" photos "$EVID/photos" b=2 d=- e=1 f=0
LIST='local dt = require "darktable"; local s = ""; for _, i in ipairs(dt.database) do s = s .. i.filename .. "=" .. i.rating .. " " end; return s'
SET='local dt = require "darktable"; for _, i in ipairs(dt.database) do if i.filename == "b.jpg" then i.rating = 1 end end; return "b.jpg set to 1"'
run_darktable "$EVID" 4 "$LIST" "$SET" "$LIST"
python3 "$HELPER" evidence "$EVID" "$DT/EVIDENCE.txt" "$EVID/lua.log"

cat >"$DT/README.txt" <<EOF
What darktable $DT_VERSION wrote (Debian package), made by scripts/make_app_fixtures.sh on $(date -u +%Y-%m-%d).

Input: $WORK/photos with 4 JPEGs of 16x12 pixels made with PIL, and sidecars another app left before:
  a.jpg.xmp  xmp:Rating="5"
  b.jpg.xmp  xmp:Rating="2"
  c.jpg.xmp  xmp:Rating="-1"
  d.jpg      no sidecar
each a one-line rdf:Description with xmp:Rating (scripts/make_app_fixtures.py, SIDECAR).

Command (private HOME, XDG folders, config and cache; a fresh library):
  xvfb-run -a dbus-run-session -- darktable --library $WORK/config/library.db \\
      --configdir $WORK/config --cachedir $WORK/cache $WORK/photos
then, once library.db held 4 images and darktable had written 4 sidecars, darktable was asked to quit over D-Bus
(gdbus call --session --dest org.darktable.service --object-path /darktable
 --method org.darktable.service.Remote.Quit): $(cat "$WORK/quit.txt")

Files:
  config/library.db   darktable's library, copied and VACUUMed with 1 KiB pages (darktable wrote $ORIG_SIZE bytes
                      with $ORIG_PAGE-byte pages); every table and row as darktable wrote them
  config/darktablerc  darktable's configuration after the run (ui_last/import_initial_rating=1,
                      write_sidecar_files=on import: darktable's defaults)
  photos/*.jpg        the input photos (darktable never writes into them)
  photos/*.jpg.xmp    the sidecars darktable (re)wrote on import
  EVIDENCE.txt        a second run: a default 1 vs a 1 from an earlier sidecar vs a 1 set inside darktable

The film roll's folder in library.db is $WORK/photos (the tests map it to photos/ here).
images as darktable stored them (id, path, flags, flags & 7, flags & 8):
$(echo "$ROWS" | sed 's/^/  /')
d.jpg holds darktable's initial import rating of 1 star, which is not the person's verdict (see
pmllm_batch/ratings/__init__.py, "darktable's import default"); c.jpg's reject is the bit flags & 8.
EOF

# 3. digiKam.
python3 "$HELPER" digikam "$OUT/digikam/digikam4.db"
cat >"$OUT/digikam/README.txt" <<'EOF'
digikam4.db: made by scripts/make_app_fixtures.py digikam (not by digiKam itself). The CREATE TABLE statements are
digiKam's own (KDE/digikam core/data/database/dbconfig.xml.cmake.in, SQLite "CreateDB"), for the tables
pmllm_batch.ratings.digikam reads plus Settings, TagsTree and TagProperties. Pick labels are digiKam's internal
tags "Pick Label None/Rejected/Pending/Accepted" under "_Digikam_Internal_Tags_" (TagsCache::getOrCreateInternalTag).
The rows (DIGIKAM_IMAGES in that script) cover: stars, a rejected pick label with and without stars, rating -1 / 0 /
missing (unrated), trashed and obsolete entries, a collection on a volume this machine lacks (uuid), a rating out
of range, a hidden photo and a percent-encoded volumeid:?path= collection.
EOF
du -ab "$OUT" | sort -k2
echo "total: $(du -sb "$OUT" | cut -f1) bytes"
