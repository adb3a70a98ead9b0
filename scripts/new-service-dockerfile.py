#!/usr/bin/env python3
# ruff: noqa: E501  (the Dockerfile template keeps its own line lengths)
"""Writes services/<name>/Dockerfile from the one template every kloop service image
follows (multi-stage uv build, non-root runtime, HEALTHCHECK on the ops port).

Usage: scripts/new-service-dockerfile.py NAME GRPC_PORT HTTP_PORT "DESCRIPTION" [ENV=VALUE...]
(ENV names are without the KLOOP_<NAME>_ prefix; e.g. CACHE_DIR=/var/cache/kloop/models.)
"""

import sys
from pathlib import Path

TEMPLATE = """# syntax=docker/dockerfile:1
# kloop {svc} service: {desc}
# Build from the repository root (the uv workspace is the context):
#   podman build --format docker -f services/{svc}/Dockerfile -t kloop/{svc} .
# Base image: python:3.11-slim, pinned by tag. Add @sha256:<digest> where the registry
# can be reached (`podman pull` prints it); here no registry can be pulled from and the
# image of that name is a local stand-in (scripts/build-base-image.sh, deploy/README.md).
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim

# --- manifests: only the files uv needs to install the dependencies --------------------
# Re-runs on any source change, but yields the same files, so the dependency layer
# below stays cached until uv.lock or a pyproject.toml changes.
FROM ${{PYTHON_IMAGE}} AS manifests
WORKDIR /src
COPY . .
RUN find . -type f ! -name pyproject.toml ! -name uv.lock -delete \\
 && find . -depth -type d -empty -delete

# --- builder: uv installs the locked runtime dependencies into /app/.venv --------------
FROM ${{PYTHON_IMAGE}} AS builder
ARG UV_VERSION=0.13.9
# --locked fails when uv.lock is stale; --frozen (a tree whose lock is being edited)
# installs what uv.lock says without that check.
ARG UV_SYNC_MODE=--locked
# The host's CA bundle (mounted at build time where a TLS proxy sits in between) is also
# the image's own: ca-certificates is part of python:3.11-slim.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    PIP_NO_CACHE_DIR=1 \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    UV_COMPILE_BYTECODE=1 \\
    UV_LINK_MODE=copy \\
    UV_PYTHON_DOWNLOADS=never \\
    UV_PYTHON=python3.11 \\
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN pip install --no-cache-dir "uv==${{UV_VERSION}}"
WORKDIR /src
COPY --from=manifests /src /src
RUN --mount=type=cache,target=/root/.cache/uv \\
    uv sync ${{UV_SYNC_MODE}} --no-dev --no-install-workspace --package kloop-{svc}
COPY libs libs
COPY services/{svc}/src services/{svc}/src
# Workspace members as regular (non-editable) wheels: the runtime needs no /src.
RUN --mount=type=cache,target=/root/.cache/uv \\
    uv sync ${{UV_SYNC_MODE}} --no-dev --no-editable --package kloop-{svc}

# --- runtime ---------------------------------------------------------------------------
FROM ${{PYTHON_IMAGE}} AS runtime
LABEL org.opencontainers.image.title="kloop-{svc}" \\
      org.opencontainers.image.description="kloop {svc} service" \\
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 kloop \\
 && useradd --uid 10001 --gid 10001 --home-dir /home/kloop --create-home \\
      --shell /usr/sbin/nologin kloop \\
 && install -d -o 10001 -g 10001 /var/cache/kloop
COPY --from=builder /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \\
    PYTHONUNBUFFERED=1 \\
    PYTHONDONTWRITEBYTECODE=1 \\
    KLOOP_{S}_GRPC_HOST=0.0.0.0 \\
    KLOOP_{S}_HTTP_HOST=0.0.0.0{extra_env}
WORKDIR /home/kloop
USER 10001:10001
EXPOSE {grpc_port} {http_port}
# Liveness of the process (the ops port's /livez); readiness is the orchestrator's job.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \\
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('KLOOP_{S}_HTTP_PORT', '{http_port}') + '/livez', timeout=2)"]
ENTRYPOINT ["kloop-{svc}"]
"""


def main() -> None:
    svc, grpc_port, http_port, desc, *env = sys.argv[1:]
    S = svc.upper().replace("-", "_")
    extra_env = "".join(f" \\\n    KLOOP_{S}_{item}" for item in env)
    path = Path(__file__).resolve().parent.parent / "services" / svc / "Dockerfile"
    path.write_text(
        TEMPLATE.format(
            svc=svc, S=S, grpc_port=grpc_port, http_port=http_port, desc=desc, extra_env=extra_env
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
