#!/usr/bin/env bash
# The README's pictures of the MLflow UI: the compare view and the leaderboard of a study, as the
# links `ablate ui` prints open them, in headless Chromium (Debian's chromium package).
# Usage: docs/screenshot_compare.sh [STUDY] [OUT_DIR]   (run where `ablate launch` wrote mlruns/)
set -euo pipefail
study="${1:-smoke}"
out="${2:-docs}"
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="$here/.venv/bin"
log="$(mktemp)"
"$bin/ablate" ui --port 0 > "$log" 2>&1 &
ui=$!
trap 'kill -TERM $ui 2>/dev/null || true; wait $ui 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 180); do grep -q "compareRunsMode=CHART" "$log" && break; sleep 1; done
links=$(grep -A5 "^  $study: leaderboard" "$log" | grep -o 'http://[^ ]*')
leaderboard=$(echo "$links" | sed -n 1p)
compare=$(echo "$links" | grep compareRunsMode=CHART)
[ -n "$compare" ] || { echo "no links for study $study:"; cat "$log"; exit 1; }
cd "$here"
"$bin/python" -m tests.browser "$compare" "$out/compare_view.png" --wait-text "det/AP50 by "
"$bin/python" -m tests.browser "$leaderboard" "$out/leaderboard.png" --wait-text "[1-9][0-9]* matching runs"
