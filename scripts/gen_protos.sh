#!/usr/bin/env bash
# Regenerates libs/protos/src from protos/ (the single source of every .proto).
set -euo pipefail
cd "$(dirname "$0")/.."
out=libs/protos/src
find "$out/kloop" -name '*_pb2*.py*' -delete 2>/dev/null || true
mapfile -t files < <(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)
uv run --no-sync python -m grpc_tools.protoc -I protos \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "${files[@]}"
# Packages need __init__.py so type checkers and hatch see them.
find "$out/kloop" -type d -exec sh -c 'test -f "$1/__init__.py" || : > "$1/__init__.py"' _ {} \;
