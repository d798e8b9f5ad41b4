#!/usr/bin/env bash
# Start in-memory PLC + a real @atproto/pds on loopback, data in a fresh temp dir.
# Writes $PDS_LOCAL_OUT/pds.json (URLs, admin password, pid, data dir) once healthy.
#   PDS_LOCAL_PLC_PORT (2582)  PDS_LOCAL_PDS_PORT (2583)  PDS_LOCAL_OUT (./out)
#   PDS_LOCAL_DATA_DIR (default: fresh mktemp -d)  PDS_LOCAL_START_TIMEOUT (60 s)
#   LOG_ENABLED=true  for PDS request logs in $PDS_LOCAL_OUT/pds.log
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${PDS_LOCAL_OUT:-$HERE/out}"
PLC_PORT="${PDS_LOCAL_PLC_PORT:-2582}"
PDS_PORT="${PDS_LOCAL_PDS_PORT:-2583}"
TIMEOUT="${PDS_LOCAL_START_TIMEOUT:-60}"
mkdir -p "$OUT"
STATE="$OUT/pds.json"
PIDFILE="$OUT/pds.pid"

if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "start: already running (pid $(cat "$PIDFILE")); run stop.sh first" >&2
  exit 1
fi
if [[ ! -d "$HERE/node_modules/@atproto/pds" ]]; then
  echo "start: node_modules missing; run install.sh first" >&2
  exit 1
fi
for p in "$PLC_PORT" "$PDS_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "start: port $p on 127.0.0.1 is already in use" >&2
    exit 1
  fi
done

DATA="${PDS_LOCAL_DATA_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/pds-local.XXXXXX")}"
mkdir -p "$DATA"
rm -f "$STATE"
t0=$(date +%s.%N)
cd "$HERE"
PDS_LOCAL_PLC_PORT="$PLC_PORT" PDS_LOCAL_PDS_PORT="$PDS_PORT" PDS_LOCAL_DATA_DIR="$DATA" \
PDS_LOCAL_STATE_FILE="$STATE" \
  nohup node "$HERE/server.cjs" >"$OUT/pds.log" 2>&1 </dev/null &
PID=$!
echo "$PID" >"$PIDFILE"

deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "start: server exited early; last log lines:" >&2
    tail -n 30 "$OUT/pds.log" >&2 || true
    rm -f "$PIDFILE"
    exit 1
  fi
  if [[ -f "$STATE" ]] \
     && curl -fsS --max-time 2 "http://127.0.0.1:$PDS_PORT/xrpc/_health" >/dev/null 2>&1 \
     && curl -fsS --max-time 2 "http://127.0.0.1:$PLC_PORT/_health" >/dev/null 2>&1; then
    break
  fi
  if (( $(date +%s) >= deadline )); then
    echo "start: not healthy after ${TIMEOUT}s; stopping pid $PID" >&2
    kill "$PID" 2>/dev/null || true
    rm -f "$PIDFILE"
    exit 1
  fi
  sleep 0.2
done
t1=$(date +%s.%N)
printf 'start: healthy in %.2fs  pid %s  PLC http://127.0.0.1:%s  PDS http://127.0.0.1:%s  data %s\n' \
  "$(awk "BEGIN{print $t1 - $t0}")" "$PID" "$PLC_PORT" "$PDS_PORT" "$DATA"
echo "start: state in $STATE"
