#!/usr/bin/env bash
# Headless screenshot of TensorBoard's dashboard for a logdir.
#
#   scripts/oracle/tb_screenshot.sh LOGDIR OUT.png [DASHBOARD]
#
# DASHBOARD: the URL fragment, default "timeseries" (also: scalars, text).
# Env: TB_PYTHON (python with tensorboard; default /tmp/oracle/venv/bin/python),
#      CHROMIUM (default: chromium), TB_PORT (default: a free port),
#      TB_WINDOW (default 1600,1200), TB_BUDGET_MS (chromium virtual-time budget, default 20000),
#      TB_FILTER (optional tag filter regex put in the URL, e.g. "train/(loss|rewards)"),
#      TB_SMOOTHING (time series only, e.g. 0 to plot raw values; TensorBoard's default is 0.6).
# Needs: chromium (Debian: apt-get install -y --no-install-recommends chromium), curl.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n 2,12p "$0" >&2
  exit 2
fi
LOGDIR=$1
OUT=$2
DASH=${3:-timeseries}
PY=${TB_PYTHON:-/tmp/oracle/venv/bin/python}
CHROMIUM=${CHROMIUM:-chromium}
WINDOW=${TB_WINDOW:-1600,1200}
BUDGET=${TB_BUDGET_MS:-20000}
PORT=${TB_PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

[[ -d $LOGDIR ]] || { echo "no such logdir: $LOGDIR" >&2; exit 2; }
command -v "$CHROMIUM" >/dev/null || { echo "chromium not found (apt-get install -y chromium)" >&2; exit 2; }
OUT=$(realpath -m "$OUT")
mkdir -p "$(dirname "$OUT")"

WORK=$(mktemp -d /tmp/tb_shot.XXXXXX)
TB_PID=
cleanup() {
  if [[ -n $TB_PID ]]; then kill "$TB_PID" 2>/dev/null || true; wait "$TB_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# --load_fast=false: pure-python data loading (no rust data server subprocess to manage).
"$PY" -m tensorboard.main --logdir "$LOGDIR" --host 127.0.0.1 --port "$PORT" --load_fast=false \
  >"$WORK/tb.log" 2>&1 &
TB_PID=$!

# Wait until the server answers and has loaded at least one run.
ok=
for _ in $(seq 1 120); do
  if ! kill -0 "$TB_PID" 2>/dev/null; then cat "$WORK/tb.log" >&2; echo "tensorboard exited" >&2; exit 1; fi
  if runs=$(curl -fsS "http://127.0.0.1:$PORT/data/runs" 2>/dev/null) && [[ $runs != "[]" ]]; then ok=1; break; fi
  sleep 0.5
done
[[ -n $ok ]] || { cat "$WORK/tb.log" >&2; echo "tensorboard not ready on port $PORT" >&2; exit 1; }

# Time series (Angular app) reads tagFilter/smoothing from the query string before the '#';
# the legacy dashboards (#scalars, #text) read "&tagFilter=" from the fragment.
q() { "$PY" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
QS= FRAG=
[[ -n ${TB_FILTER:-} ]] && { if [[ $DASH == timeseries ]]; then QS+="&tagFilter=$(q "$TB_FILTER")"; else FRAG+="&tagFilter=$(q "$TB_FILTER")"; fi; }
[[ -n ${TB_SMOOTHING:-} && $DASH == timeseries ]] && QS+="&smoothing=$TB_SMOOTHING"
URL="http://127.0.0.1:$PORT/${QS:+?${QS#&}}#$DASH$FRAG"

# --no-sandbox: needed as root. A fresh profile dir keeps settings (e.g. stored pins) out of it.
rm -f "$OUT"
timeout 120 "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
  --hide-scrollbars --no-first-run --no-default-browser-check --user-data-dir="$WORK/profile" \
  --window-size="$WINDOW" --virtual-time-budget="$BUDGET" --run-all-compositor-stages-before-draw \
  --screenshot="$OUT" "$URL" >"$WORK/chromium.log" 2>&1 || { cat "$WORK/chromium.log" >&2; exit 1; }
[[ -s $OUT ]] || { cat "$WORK/chromium.log" >&2; echo "no screenshot written" >&2; exit 1; }
echo "$OUT ($URL)"
