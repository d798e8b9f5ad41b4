#!/usr/bin/env bash
# Installs the pinned PDS + PLC (package-lock.json) into tests/pds/node_modules with `npm ci`.
# better-sqlite3's prebuilt download (GitHub) fails offline, so node-gyp builds it from source
# (about 1-3 min): needs gcc, make, python3 and the Node headers (found next to the node binary,
# or given as npm_config_nodedir). scripts/test calls this when the lock file changed.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
major="$(node -p 'process.versions.node.split(".")[0]')"
[[ "$major" == "20" ]] || echo "install: warning: Node $(node --version); @atproto/pds 0.4.217 was verified on Node 20" >&2
if [[ -z "${npm_config_nodedir:-}" ]]; then
  prefix="$(dirname "$(dirname "$(command -v node)")")"
  for d in "$prefix" /usr /usr/local; do
    if [[ -f "$d/include/node/node.h" ]]; then export npm_config_nodedir="$d"; break; fi
  done
fi
if [[ -z "${npm_config_nodedir:-}" ]]; then
  echo "install: no Node headers (include/node/node.h) found; better-sqlite3 cannot build offline" >&2
  exit 1
fi
log="${TMPDIR:-/tmp}/bluesky-backups-pds-npm-ci.log"
t0=$(date +%s)
npm ci --no-audit --no-fund --foreground-scripts >"$log" 2>&1 || {
  tail -n 40 "$log" >&2; echo "install: npm ci failed (full log: $log)" >&2; exit 1; }
node -e 'new (require("better-sqlite3"))(":memory:").close()' || {
  echo "install: better-sqlite3 did not build (log: $log)" >&2; exit 1; }
t1=$(date +%s)
echo "install: tests/pds npm ci + better-sqlite3 build in $((t1 - t0))s" >&2
