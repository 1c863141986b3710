#!/usr/bin/env bash
# Rebuild docs/report.png, the README's picture of `pmllm-batch report`: rank the example photos for the example
# profiles with the demo model in a throw-away database, make the report, screenshot it with headless Chromium
# (Debian package `chromium`) and shrink it to a small palette PNG. Touches nothing but docs/report.png.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
db="$work/library.sqlite"
pmllm-batch --db "$db" -q profile add "$repo"/examples/profiles/*.toml >/dev/null
pmllm-batch --db "$db" -q rank "$repo/examples/photos" >/dev/null
pmllm-batch --db "$db" report --out "$work/report" --top 6
"${CHROMIUM:-chromium}" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
  --user-data-dir="$work/chromium" --window-size=1200,900 --screenshot="$work/shot.png" \
  "file://$work/report/index.html" 2>/dev/null
python3 - "$work/shot.png" "$repo/docs/report.png" <<'PY'
import sys
from PIL import Image

img = Image.open(sys.argv[1]).convert("RGB")
img.thumbnail((800, 800))
img.quantize(colors=96, dither=Image.Dither.NONE).save(sys.argv[2], optimize=True)
print(f"wrote {sys.argv[2]} ({img.width}x{img.height})")
PY
