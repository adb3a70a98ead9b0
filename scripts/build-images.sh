#!/usr/bin/env bash
# Builds every service image (services/<name>/Dockerfile whose code exists) with podman
# on the local base image, then prints name, size and build time of each.
# Usage: scripts/build-images.sh [SERVICE...]
# Env: IMAGE_REPO (localhost/kloop), IMAGE_TAG (dev), UV_SYNC_MODE (--locked),
#      PODMAN (podman --runtime runc), KLOOP_IMAGE_REPORT (file for the table).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
repo=${IMAGE_REPO:-localhost/kloop}
tag=${IMAGE_TAG:-dev}
podman=${PODMAN:-podman --runtime runc}
report=${KLOOP_IMAGE_REPORT:-$root/deploy/.tools/images.tsv}
mkdir -p "$(dirname "$report")"
[[ -f $root/deploy/.tools/.gitignore ]] || echo '*' >"$root/deploy/.tools/.gitignore"

services=("$@")
if ((${#services[@]} == 0)); then
  for dockerfile in services/*/Dockerfile; do
    name=$(basename "$(dirname "$dockerfile")")
    # A service is built once its entry point exists.
    # (package kloop_<name with dashes as underscores>: drift-monitor -> kloop_drift_monitor).
    [[ -f services/$name/src/kloop_${name//-/_}/main.py ]] && services+=("$name")
  done
fi

# The host CA bundle is mounted at build time: package downloads may pass a TLS proxy.
ca_mount=()
[[ -d /etc/ssl/certs ]] && ca_mount=(-v /etc/ssl/certs:/etc/ssl/certs:ro)

printf 'image\tsize_mb\tbuild_s\n' >"$report"
for name in "${services[@]}"; do
  image=$repo/$name:$tag
  echo "== building $image"
  start=$(date +%s.%N)
  $podman build --pull=never --format docker "${ca_mount[@]}" \
    --build-arg "UV_SYNC_MODE=${UV_SYNC_MODE:---locked}" \
    -f "services/$name/Dockerfile" -t "$image" . >"$root/deploy/.tools/build-$name.log" 2>&1 || {
    tail -40 "$root/deploy/.tools/build-$name.log"
    echo "building $image failed (full log: deploy/.tools/build-$name.log)" >&2
    exit 1
  }
  seconds=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)")
  bytes=$($podman image inspect --format '{{.Size}}' "$image")
  printf '%s\t%d\t%s\n' "$image" $((bytes / 1000000)) "$seconds" >>"$report"
done
column -t -s $'\t' "$report"
