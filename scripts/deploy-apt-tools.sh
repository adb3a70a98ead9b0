#!/usr/bin/env bash
# Installs the Debian packages the deploy targets need (idempotent): podman + runc to
# build and run images, debootstrap for the stand-in base image, prometheus for
# promtool. Root only; a machine that already has them does nothing.
set -euo pipefail
want=()
command -v podman >/dev/null 2>&1 || want+=(podman)
command -v runc >/dev/null 2>&1 || want+=(runc)
command -v debootstrap >/dev/null 2>&1 || want+=(debootstrap)
command -v promtool >/dev/null 2>&1 || want+=(prometheus)
for tool in "$@"; do
  case "$tool" in
    podman|runc|debootstrap) ;;
    promtool) ;;
  esac
done
if ((${#want[@]} == 0)); then exit 0; fi
if [[ $(id -u) != 0 ]]; then
  echo "missing ${want[*]}: install them (Debian: apt-get install -y ${want[*]})" >&2
  exit 1
fi
echo "apt-get install ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
# prometheus' package starts a server through systemd where there is one; nothing here
# needs it running (promtool and tests start their own on loopback).
