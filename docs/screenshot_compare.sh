#!/usr/bin/env bash
# Screenshot of the MLflow compare view of a study's fine-tuning runs (the picture in README.md).
# Usage: docs/screenshot_compare.sh [STUDY] [OUT.png]   (run where `ablate launch` wrote mlruns/)
# Needs Debian's chromium (apt-get install chromium).
set -euo pipefail
study="${1:-smoke}"
out="${2:-docs/compare_view.png}"
port=5055
bin="$(dirname "$0")/../.venv/bin"
"$bin/ablate" ui --port "$port" > /tmp/ablate-ui.log 2>&1 &
ui=$!
trap 'kill $ui 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/" > /dev/null && break; sleep 1; done
query=$("$bin/python" - "$study" <<'PY'
import json, sys, urllib.parse
from mlflow.tracking import MlflowClient
from experiments.tracking import default_tracking_uri
client = MlflowClient(default_tracking_uri())
exp = client.get_experiment_by_name(sys.argv[1])
runs = client.search_runs([exp.experiment_id], filter_string="tags.`ablate.stage` = 'finetune'")
q = urllib.parse.quote
print(f"runs={q(json.dumps([r.info.run_id for r in runs]))}&experiments={q(json.dumps([exp.experiment_id]))}")
PY
)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --window-size=1600,1100 \
  --virtual-time-budget=20000 --screenshot="$out" "http://127.0.0.1:$port/#/compare-runs?$query"
echo "wrote $out"
