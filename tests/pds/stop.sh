#!/usr/bin/env bash
# Stop the server started by start.sh (by its recorded PID only) and
# delete its temp data dir unless PDS_LOCAL_KEEP_DATA=1.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${PDS_LOCAL_OUT:-$HERE/out}"
PIDFILE="$OUT/pds.pid"
STATE="$OUT/pds.json"
if [[ ! -f "$PIDFILE" ]]; then
  echo "stop: no pid file ($PIDFILE); nothing to stop"
  exit 0
fi
PID="$(cat "$PIDFILE")"
DATA=""
[[ -f "$STATE" ]] && DATA="$(node -e 'console.log(require(process.argv[1]).dataDir||"")' "$STATE" 2>/dev/null || true)"
if kill -0 "$PID" 2>/dev/null; then
  kill -TERM "$PID"
  for _ in $(seq 1 100); do
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$PID" 2>/dev/null; then
    echo "stop: pid $PID ignored SIGTERM for 10s; sending SIGKILL"
    kill -KILL "$PID" 2>/dev/null || true
  fi
  echo "stop: stopped pid $PID"
else
  echo "stop: pid $PID was not running"
fi
rm -f "$PIDFILE" "$STATE"
if [[ -n "$DATA" && -d "$DATA" && "${PDS_LOCAL_KEEP_DATA:-0}" != "1" && -z "${PDS_LOCAL_DATA_DIR:-}" ]]; then
  case "$(basename "$DATA")" in
    pds-local.*) rm -rf -- "$DATA"; echo "stop: removed $DATA" ;;
    *) echo "stop: kept data dir $DATA (not a pds-local temp dir)" ;;
  esac
fi
