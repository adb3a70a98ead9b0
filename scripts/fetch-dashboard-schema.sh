#!/usr/bin/env bash
# Installs TypeScript and Grafana's published dashboard types (@grafana/schema) into
# deploy/.tools/dashboard-schema (npm, pinned; cached) for scripts/check-dashboards.py
# --schema, and prints that directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/deploy/.tools/dashboard-schema
typescript=${TYPESCRIPT_VERSION:-5.9.3}
schema=${GRAFANA_SCHEMA_VERSION:-13.2.3}
stamp=$dir/.installed-$typescript-$schema
if [[ ! -f $stamp ]]; then
  command -v npm >/dev/null || { echo "npm is needed (apt-get install -y npm)" >&2; exit 1; }
  mkdir -p "$dir"
  echo '{"private": true}' >"$dir/package.json"
  (cd "$dir" && npm install --no-audit --no-fund --silent --no-save \
    "typescript@$typescript" "@grafana/schema@$schema" >&2)
  touch "$stamp"
fi
echo "$dir"
