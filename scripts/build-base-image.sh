#!/usr/bin/env bash
# Builds the local stand-in for python:3.11-slim when no registry can be pulled from:
# a Debian bookworm minbase rootfs (debootstrap) with Debian's Python 3.11, imported into
# podman under the same name, so the Dockerfiles stay unchanged for a real registry.
# Cached: does nothing when the image exists (KLOOP_BASE_REBUILD=1 forces a rebuild).
# Usage: scripts/build-base-image.sh [IMAGE]   (default docker.io/library/python:3.11-slim)
set -euo pipefail
image=${1:-docker.io/library/python:3.11-slim}
podman=${PODMAN:-podman}
if [[ ${KLOOP_BASE_REBUILD:-0} != 1 ]] && $podman image exists "$image"; then
  echo "base image $image already present"
  exit 0
fi
mirror=${KLOOP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
rootfs=$(mktemp -d /var/tmp/kloop-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
start=$(date +%s)
echo "debootstrap bookworm into $rootfs (about 1.5 min)"
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
# Make it behave like the official image: pip may install into the system Python, and
# `python` exists.
rm -f "$rootfs"/usr/lib/python3.11/EXTERNALLY-MANAGED
ln -sf python3 "$rootfs/usr/bin/python"
# The official image keeps no apt lists or caches either.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" -c . | $podman import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  - "$image" >/dev/null
echo "built $image in $(($(date +%s) - start)) s"
